# Names and values shared by the other files.
#
#   apis.tf      Google APIs the system needs
#   storage.tf   images bucket (or an existing one), source bucket, source archive
#   outputs_bucket.tf  the bucket crops, overviews and markers go to (separate_outputs_bucket)
#   bigquery.tf  dataset, the objects / images / embeddings / search_matches tables (schemas
#                from segmentation/schema/) and the embeddings' vector index
#   iam.tf       service accounts and every grant, each on the narrowest resource
#   function.tf  the 2nd gen function, its object-finalize trigger and environment
#   dead_letter.tf  dead-letter topic for the trigger's subscription (poison events)
#   outputs.tf   what to use after apply

locals {
  base = "conveyor-${var.environment}"

  function_name = var.function_name != "" ? var.function_name : "conveyor-segmentation-${var.environment}"

  # The images bucket: created here, or an existing one (create_bucket = false).
  images_bucket_name = (
    var.create_bucket
    ? google_storage_bucket.images[0].name
    : data.google_storage_bucket.existing_images[0].name
  )
  images_bucket_location = (
    var.create_bucket
    ? google_storage_bucket.images[0].location
    : data.google_storage_bucket.existing_images[0].location
  )

  # Cloud Storage triggers must live in the bucket's location (a region, or eu/us/asia).
  trigger_region = lower(local.images_bucket_location)

  # Fully qualified table ids, the form the BQ_*_TABLE settings expect.
  objects_table_id = "${google_bigquery_table.objects.project}.${google_bigquery_table.objects.dataset_id}.${google_bigquery_table.objects.table_id}"
  images_table_id  = "${google_bigquery_table.images.project}.${google_bigquery_table.images.dataset_id}.${google_bigquery_table.images.table_id}"
  # BQ_EMBEDDINGS_TABLE / BQ_SEARCH_MATCHES_TABLE (lost-bag search).
  embeddings_table_id     = "${google_bigquery_table.embeddings.project}.${google_bigquery_table.embeddings.dataset_id}.${google_bigquery_table.embeddings.table_id}"
  search_matches_table_id = "${google_bigquery_table.search_matches.project}.${google_bigquery_table.search_matches.dataset_id}.${google_bigquery_table.search_matches.table_id}"

  # Memory tiers in MiB, for the Cloud Run CPU/memory preconditions in function.tf.
  memory_mib = {
    "256Mi" = 256
    "512Mi" = 512
    "1Gi"   = 1024
    "2Gi"   = 2048
    "4Gi"   = 4096
    "8Gi"   = 8192
    "16Gi"  = 16384
    "32Gi"  = 32768
  }
}
