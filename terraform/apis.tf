# The Google APIs the function, its trigger, its build and its data need.
#
# disable_on_destroy = false: `terraform destroy` leaves the APIs enabled. Disabling an API
# that other workloads in the project use would break them, and re-enabling is slow.

locals {
  required_apis = toset([
    "cloudfunctions.googleapis.com",   # the function
    "run.googleapis.com",              # 2nd gen functions run as Cloud Run services
    "eventarc.googleapis.com",         # the object-finalize trigger
    "pubsub.googleapis.com",           # Eventarc's transport for Cloud Storage events
    "cloudbuild.googleapis.com",       # builds the function's container from source
    "artifactregistry.googleapis.com", # stores that container
    "storage.googleapis.com",          # the images and source buckets
    "bigquery.googleapis.com",         # the result tables (tabledata.insertAll)
    "aiplatform.googleapis.com",       # Gemini on Vertex AI
    "logging.googleapis.com",          # the function's structured logs
    "iam.googleapis.com",              # creating the service accounts below
  ])
}

resource "google_project_service" "enabled" {
  for_each = local.required_apis

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
