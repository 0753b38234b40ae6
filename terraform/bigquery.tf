# The result tables. Their columns come from segmentation/schema/*.json, the files the code
# builds and validates its rows against: there is no second copy of the schema.
#
# Both tables are partitioned by the day of processed_at (queries that filter on it read only
# those days) and clustered on what people filter by.

locals {
  schema_dir            = "${path.module}/../segmentation/schema"
  partition_expiration  = var.partition_expiration_days > 0 ? var.partition_expiration_days * 24 * 60 * 60 * 1000 : null
  bigquery_dataset_area = var.bigquery_location != "" ? var.bigquery_location : var.region
  # Per environment by default, so dev and prod can share a project.
  dataset_id = var.dataset_id != "" ? var.dataset_id : "conveyor_${replace(var.environment, "-", "_")}"
}

resource "google_bigquery_dataset" "results" {
  #checkov:skip=CKV_GCP_81:A customer-managed key is optional: bigquery_kms_key_name sets default_encryption_configuration; empty keeps Google-managed keys.
  project     = var.project_id
  dataset_id  = local.dataset_id
  location    = local.bigquery_dataset_area
  description = "Conveyor segmentation results (${var.environment}): one row per detected object and one per processed image."

  # With deletion protection the dataset keeps its contents on destroy (and the tables refuse to go).
  delete_contents_on_destroy = !var.deletion_protection

  dynamic "default_encryption_configuration" {
    for_each = var.bigquery_kms_key_name != "" ? [var.bigquery_kms_key_name] : []
    content {
      kms_key_name = default_encryption_configuration.value
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents_use_keys]
}

resource "google_bigquery_table" "objects" {
  #checkov:skip=CKV_GCP_80:Encrypted with the dataset's default key: bigquery_kms_key_name (customer-managed) or Google-managed keys.
  #checkov:skip=CKV_GCP_121:Deletion protection is the deletion_protection variable, on by default and in prod; dev turns it off on purpose so terraform destroy can remove the tables.
  project     = var.project_id
  dataset_id  = google_bigquery_dataset.results.dataset_id
  table_id    = "objects"
  description = "One row per detected object: label, colour, descriptions, box, crop URI. De-duplicate on row_id for exact counts."

  schema = file("${local.schema_dir}/objects.json")

  time_partitioning {
    type          = "DAY"
    field         = "processed_at"
    expiration_ms = local.partition_expiration
  }
  clustering = ["label", "item_color"]

  deletion_protection = var.deletion_protection
}

resource "google_bigquery_table" "images" {
  #checkov:skip=CKV_GCP_80:Encrypted with the dataset's default key: bigquery_kms_key_name (customer-managed) or Google-managed keys.
  #checkov:skip=CKV_GCP_121:Deletion protection is the deletion_protection variable, on by default and in prod; dev turns it off on purpose so terraform destroy can remove the tables.
  project     = var.project_id
  dataset_id  = google_bigquery_dataset.results.dataset_id
  table_id    = "images"
  description = "One row per processed image: status (ok, partial, empty, failed), objects found, error, timings."

  schema = file("${local.schema_dir}/images.json")

  time_partitioning {
    type          = "DAY"
    field         = "processed_at"
    expiration_ms = local.partition_expiration
  }
  clustering = ["status"]

  deletion_protection = var.deletion_protection
}
