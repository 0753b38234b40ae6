# The result tables. Their columns come from segmentation/schema/*.json, the files the code
# builds and validates its rows against: there is no second copy of the schema.
#
# objects and images are partitioned by the day of processed_at (queries that filter on it read
# only those days) and clustered on what people filter by; the search tables are further down.

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
  description = "Conveyor segmentation results (${var.environment}): one row per detected object and one per processed image, crop embeddings and lost-bag search matches."

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

# --- Lost-bag search -------------------------------------------------------------------------
# embeddings: one row per indexed crop. Searches read only a time window (since/until) and often
# one camera, so the table is partitioned by the day the photo was seen and clustered by camera;
# its partitions expire with the objects rows they point to.

resource "google_bigquery_table" "embeddings" {
  #checkov:skip=CKV_GCP_80:Encrypted with the dataset's default key: bigquery_kms_key_name (customer-managed) or Google-managed keys.
  #checkov:skip=CKV_GCP_121:Deletion protection is the deletion_protection variable, on by default and in prod; dev turns it off on purpose so terraform destroy can remove the tables.
  project     = var.project_id
  dataset_id  = google_bigquery_dataset.results.dataset_id
  table_id    = "embeddings"
  description = "One row per indexed crop for lost-bag search: the embedding (unit length), its embedder, model and length, and where and when the bag was seen. Searched with VECTOR_SEARCH (COSINE)."

  schema = file("${local.schema_dir}/embeddings.json")

  time_partitioning {
    type          = "DAY"
    field         = "seen_at"
    expiration_ms = local.partition_expiration
  }
  clustering = ["camera"]

  deletion_protection = var.deletion_protection
}

# search_matches: one row per match of a query. A query is looked up by its URI; the rows go
# with the query photos after search_retention_days.
resource "google_bigquery_table" "search_matches" {
  #checkov:skip=CKV_GCP_80:Encrypted with the dataset's default key: bigquery_kms_key_name (customer-managed) or Google-managed keys.
  #checkov:skip=CKV_GCP_121:Deletion protection is the deletion_protection variable, on by default and in prod; dev turns it off on purpose so terraform destroy can remove the tables.
  project     = var.project_id
  dataset_id  = google_bigquery_dataset.results.dataset_id
  table_id    = "search_matches"
  description = "One row per match of a lost-bag query (search/): rank, score, the matched crop and where and when it was seen."

  schema = file("${local.schema_dir}/search_matches.json")

  time_partitioning {
    type          = "DAY"
    field         = "searched_at"
    expiration_ms = local.search_partition_expiration
  }
  clustering = ["query_uri"]

  deletion_protection = var.deletion_protection
}

# The vector index. The google provider has no resource for BigQuery vector indexes (only the
# Vertex AI / Vector Search products have index resources), so a query job runs the DDL once.
# BigQuery builds the index only once the table is large enough (about 10 MB); until then, and
# for any query it cannot serve, VECTOR_SEARCH compares every row of the filtered base table,
# exactly. The columns a search filters on and returns (segmentation/search/bigquery_store.py)
# are stored in the index, so that a filtered search can be answered from it.
#
# A job can neither change nor be deleted, and its id is unique in the project for good: the id
# carries the table's creation time (a re-created table gets a new job) and a hash of the DDL (a
# changed DDL runs a new job). `IF NOT EXISTS` keeps a re-run harmless; changing the index's
# definition needs `DROP VECTOR INDEX` first (terraform/README.md, Lost-bag search).
locals {
  vector_index_name = "embeddings_embedding"
  vector_index_ddl  = <<-SQL
    CREATE VECTOR INDEX IF NOT EXISTS `${local.vector_index_name}`
    ON `${local.embeddings_table_id}`(embedding)
    STORING(embedder, model, dimensions, camera, seen_at, item_color, detector, object_row_id,
      crop_uri, source_uri, label, item_gen_desc, item_det_desc)
    OPTIONS(index_type = 'IVF', distance_type = 'COSINE')
  SQL
  search_partition_expiration = var.search_retention_days > 0 ? var.search_retention_days * 24 * 60 * 60 * 1000 : null
}

resource "google_bigquery_job" "embeddings_vector_index" {
  project  = var.project_id
  location = google_bigquery_dataset.results.location
  job_id   = "${local.base}-embeddings-vector-index-${google_bigquery_table.embeddings.creation_time}-${substr(sha256(local.vector_index_ddl), 0, 12)}"

  query {
    query          = local.vector_index_ddl
    use_legacy_sql = false
    # DDL has no destination table: the provider's defaults (CREATE_IF_NEEDED, WRITE_EMPTY) must be cleared.
    create_disposition = ""
    write_disposition  = ""
  }
}
