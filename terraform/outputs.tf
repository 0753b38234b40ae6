# What to use after `terraform apply`: see the README's Deploy section.

output "images_bucket" {
  description = "The bucket cameras upload to."
  value       = local.images_bucket_name
}

output "outputs_bucket" {
  description = "The bucket crops, overviews and completion markers go to (the images bucket when separate_outputs_bucket = false)."
  value       = local.outputs_bucket_name
}

output "upload_command" {
  description = "How a camera (or you) uploads a photo: replace PHOTO.jpg and CAMERA_ID. Only objects under the source prefix are processed."
  value       = "gcloud storage cp PHOTO.jpg gs://${local.images_bucket_name}/${var.source_prefix}CAMERA_ID/"
}

output "objects_table" {
  description = "BigQuery table with one row per detected object (project.dataset.table)."
  value       = local.objects_table_id
}

output "images_table" {
  description = "BigQuery table with one row per processed image (project.dataset.table)."
  value       = local.images_table_id
}

output "embeddings_table" {
  description = "BigQuery table with one embedding per indexed crop, searched with VECTOR_SEARCH (project.dataset.table)."
  value       = local.embeddings_table_id
}

output "search_matches_table" {
  description = "BigQuery table with one row per match of a lost-bag query (project.dataset.table)."
  value       = local.search_matches_table_id
}

output "search_command" {
  description = "How a search_uploaders member looks for a lost bag: upload a photo (or a .txt/.json description) under the search prefix; the results JSON and contact sheet appear under the results prefix of the outputs bucket."
  value       = "gcloud storage cp LOST_BAG.jpg gs://${local.images_bucket_name}/${var.search_prefix} && gcloud storage ls gs://${local.outputs_bucket_name}/${var.search_results_prefix}LOST_BAG.jpg*"
}

output "function_name" {
  description = "The Cloud Function (2nd gen) that processes each upload."
  value       = google_cloudfunctions2_function.segmentation.name
}

output "function_region" {
  description = "Region of the function (for gcloud functions logs read --region)."
  value       = google_cloudfunctions2_function.segmentation.location
}

output "runtime_service_account" {
  description = "The identity the function runs as."
  value       = google_service_account.runtime.email
}

output "dead_letter_topic" {
  description = "Pub/Sub topic receiving events the function never acknowledged after dead_letter_max_delivery_attempts deliveries."
  value       = google_pubsub_topic.dead_letter.id
}

output "dead_letter_subscription" {
  description = "Pull subscription keeping dead-lettered events for dead_letter_retention_days; read with gcloud pubsub subscriptions pull."
  value       = google_pubsub_subscription.dead_letter.id
}

output "example_query" {
  description = "Today's objects with the newest first, de-duplicated on row_id; run it with bq query --use_legacy_sql=false."
  value       = <<-SQL
    SELECT processed_at, label, item_color, item_gen_desc, output_uri
    FROM `${local.objects_table_id}`
    WHERE DATE(processed_at) = CURRENT_DATE() AND detector != 'offline'
    QUALIFY ROW_NUMBER() OVER (PARTITION BY row_id ORDER BY processed_at) = 1
    ORDER BY processed_at DESC
    LIMIT 20
  SQL
}

output "runtime_custom_roles" {
  description = "The runtime account's custom roles: Gemini prompt and embedding requests (project), streaming inserts (the four tables), search query jobs (project) and reading the embeddings table."
  value = {
    gemini_caller = google_project_iam_custom_role.gemini_caller.name
    row_inserter  = google_project_iam_custom_role.row_inserter.name
    query_runner  = google_project_iam_custom_role.query_runner.name
    row_reader    = google_project_iam_custom_role.row_reader.name
  }
}
