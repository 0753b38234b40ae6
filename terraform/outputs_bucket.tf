# The outputs bucket: crops, overviews, completion markers, claims and lost-bag search results
# (OUTPUT_BUCKET), when separate_outputs_bucket is true (the default). The function's writes then
# fire no events on the images bucket's trigger, and the runtime account may only read the images
# bucket (raw/, backgrounds/ and search/, iam.tf). With false, outputs go to the images bucket
# under the same prefixes.

locals {
  outputs_bucket_name = var.separate_outputs_bucket ? google_storage_bucket.outputs[0].name : local.images_bucket_name
  # OUTPUT_BUCKET: empty means "the bucket of the upload" (the single-bucket layout).
  output_bucket_setting = var.separate_outputs_bucket ? google_storage_bucket.outputs[0].name : ""
}

resource "google_storage_bucket" "outputs" {
  #checkov:skip=CKV_GCP_62:Usage/storage logs are a legacy feature; reads and writes are audited with Cloud Audit Logs (Data Access logs for storage.googleapis.com), enabled per organisation or project.
  #checkov:skip=CKV_GCP_78:Versioning is the bucket_versioning variable (on in prod), as for the images bucket. Objects are outputs the function can recompute from the uploads.
  count = var.separate_outputs_bucket ? 1 : 0

  project  = var.project_id
  name     = var.outputs_bucket_name != "" ? var.outputs_bucket_name : "${var.project_id}-${local.base}-outputs"
  location = var.bucket_location != "" ? upper(var.bucket_location) : upper(var.region)

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.bucket_force_destroy

  versioning {
    enabled = var.bucket_versioning
  }

  # The images bucket's customer-managed key (bucket_kms_key_name), if any.
  dynamic "encryption" {
    for_each = var.bucket_kms_key_name != "" ? [var.bucket_kms_key_name] : []
    content {
      default_kms_key_name = encryption.value
    }
  }

  # Age-based deletion of what the function writes.
  dynamic "lifecycle_rule" {
    for_each = var.outputs_retention_days > 0 ? [[var.crops_prefix, var.overview_prefix, var.markers_prefix]] : []
    content {
      condition {
        age            = var.outputs_retention_days
        matches_prefix = lifecycle_rule.value
      }
      action {
        type = "Delete"
      }
    }
  }

  # Lost-bag search results (JSON and contact sheet) go with their queries.
  dynamic "lifecycle_rule" {
    for_each = var.search_retention_days > 0 ? [[var.search_results_prefix]] : []
    content {
      condition {
        age            = var.search_retention_days
        matches_prefix = lifecycle_rule.value
      }
      action {
        type = "Delete"
      }
    }
  }

  # A delivery's claim on an image matters only while the trigger's subscription may still
  # redeliver the event (dead_letter_retention_days).
  lifecycle_rule {
    condition {
      age            = var.dead_letter_retention_days + 1
      matches_prefix = [var.markers_prefix]
      matches_suffix = [".claim"]
    }
    action {
      type = "Delete"
    }
  }

  # With versioning: noncurrent versions go after a while.
  dynamic "lifecycle_rule" {
    for_each = var.bucket_versioning && var.noncurrent_version_retention_days > 0 ? [var.noncurrent_version_retention_days] : []
    content {
      condition {
        days_since_noncurrent_time = lifecycle_rule.value
        with_state                 = "ARCHIVED"
      }
      action {
        type = "Delete"
      }
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents_use_keys]
}

# The runtime account creates, overwrites, reads, lists and deletes in the outputs bucket only:
# everything in it is the function's own, so no prefix condition.
resource "google_storage_bucket_iam_member" "runtime_writes_outputs_bucket" {
  count = var.separate_outputs_bucket ? 1 : 0

  bucket = google_storage_bucket.outputs[0].name
  role   = "roles/storage.objectUser"
  member = local.runtime_member
}
