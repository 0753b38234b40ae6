# The images bucket the cameras upload to, the bucket holding the function's source archive,
# and that archive.

# --- Images bucket -----------------------------------------------------------------------------

resource "google_storage_bucket" "images" {
  #checkov:skip=CKV_GCP_62:Usage/storage logs are a legacy feature; reads and writes are audited with Cloud Audit Logs (Data Access logs for storage.googleapis.com), enabled per organisation or project.
  #checkov:skip=CKV_GCP_78:Versioning is the bucket_versioning variable (on in prod). Objects are camera uploads and outputs the function can recompute; dev keeps it off to avoid paying for noncurrent versions.
  count = var.create_bucket ? 1 : 0

  project  = var.project_id
  name     = var.bucket_name != "" ? var.bucket_name : "${var.project_id}-${local.base}-images"
  location = var.bucket_location != "" ? upper(var.bucket_location) : upper(var.region)

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.bucket_force_destroy

  versioning {
    enabled = var.bucket_versioning
  }

  # Customer-managed key for new objects (bucket_kms_key_name); none: Google-managed keys.
  dynamic "encryption" {
    for_each = var.bucket_kms_key_name != "" ? [var.bucket_kms_key_name] : []
    content {
      default_kms_key_name = encryption.value
    }
  }

  # Age-based deletion of camera uploads.
  dynamic "lifecycle_rule" {
    for_each = var.raw_retention_days > 0 ? [var.source_prefix] : []
    content {
      condition {
        age            = var.raw_retention_days
        matches_prefix = [lifecycle_rule.value]
      }
      action {
        type = "Delete"
      }
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

  # Lost-bag queries, and their results when they live here too (single-bucket layout), are
  # deleted search_retention_days after they were written.
  dynamic "lifecycle_rule" {
    for_each = var.search_retention_days > 0 ? [var.separate_outputs_bucket ? [var.search_prefix] : [var.search_prefix, var.search_results_prefix]] : []
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

  # A delivery's claim on an image (processed-markers/<name>.claim) matters only while the
  # trigger's subscription may still redeliver the event (dead_letter_retention_days).
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

data "google_storage_bucket" "existing_images" {
  count = var.create_bucket ? 0 : 1

  name = var.bucket_name

  lifecycle {
    precondition {
      condition     = var.bucket_name != ""
      error_message = "create_bucket = false needs bucket_name: the existing images bucket."
    }
    postcondition {
      condition     = self.uniform_bucket_level_access
      error_message = "The existing images bucket must have uniform bucket-level access: the function's grants are IAM conditions on object prefixes."
    }
  }
}

# --- Function source ---------------------------------------------------------------------------

# The archive holds main.py, requirements.txt (the hashed lock) and the segmentation package (its
# modules, subpackages and schema files) and nothing else: not tests/, not samples/, not devtools/
# (local emulation and stand-ins, developer-only), not the virtualenv.
# tests/test_terraform.py reads function_source_patterns from this file, builds the same archive
# and imports the function from it in a clean interpreter.
locals {
  function_source_root     = abspath("${path.module}/..")
  function_source_patterns = ["main.py", "requirements.txt", "segmentation/**/*.py", "segmentation/schema/*.json"]
  function_source_files = sort(distinct(flatten([
    for pattern in local.function_source_patterns : tolist(fileset(local.function_source_root, pattern))
  ])))
}

data "archive_file" "function_source" {
  type             = "zip"
  output_path      = "${path.module}/.build/function-source.zip"
  output_file_mode = "0644"

  dynamic "source" {
    for_each = local.function_source_files
    content {
      content  = file("${local.function_source_root}/${source.value}")
      filename = source.value
    }
  }
}

resource "google_storage_bucket" "function_source" {
  #checkov:skip=CKV_GCP_62:Usage/storage logs are a legacy feature; access is audited with Cloud Audit Logs. The bucket only holds build inputs.
  #checkov:skip=CKV_GCP_78:Each archive is named by its MD5 and never overwritten, so versions add nothing; the archives are rebuilt from git.
  project  = var.project_id
  name     = "${var.project_id}-${local.base}-source"
  location = upper(var.region)

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # Only build inputs live here, reproducible from git: nothing to protect on destroy.
  force_destroy = true

  depends_on = [google_project_service.enabled]
}

# Named by content, so a change to the code changes the object name and redeploys the function.
resource "google_storage_bucket_object" "function_source" {
  name         = "conveyor-segmentation-${data.archive_file.function_source.output_md5}.zip"
  bucket       = google_storage_bucket.function_source.name
  source       = data.archive_file.function_source.output_path
  content_type = "application/zip"
}
