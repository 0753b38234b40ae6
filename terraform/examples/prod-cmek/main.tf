# Prod with customer-managed keys: one key ring in a separate key project, one key per service
# (images bucket, BigQuery dataset, dead-letter topic), each in the location of what it encrypts.
# The module grants each service agent roles/cloudkms.cryptoKeyEncrypterDecrypter on its key; the
# account running Terraform needs cloudkms.cryptoKeys.setIamPolicy on the keys (Cloud KMS Admin).
#
#   terraform init -backend-config="bucket=my-conveyor-tfstate" -backend-config="prefix=conveyor-segmentation/example-prod"
#   terraform apply -var project_id=my-conveyor-prod -var kms_project_id=my-conveyor-kms

terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.46"
    }
  }

  backend "gcs" {}
}

variable "project_id" {
  description = "The project the pipeline runs in."
  type        = string
}

variable "kms_project_id" {
  description = "The project holding the keys (separation of duties: its admins are not the pipeline's)."
  type        = string
}

locals {
  region = "europe-west1"
}

resource "google_kms_key_ring" "conveyor" {
  project  = var.kms_project_id
  name     = "conveyor-prod"
  location = local.region
}

resource "google_kms_crypto_key" "conveyor" {
  for_each = toset(["images", "rows", "dead-letters"])

  name            = each.value
  key_ring        = google_kms_key_ring.conveyor.id
  rotation_period = "7776000s" # 90 days

  lifecycle {
    prevent_destroy = true # data encrypted with a destroyed key is lost
  }
}

module "conveyor" {
  source = "../.."

  project_id  = var.project_id
  region      = local.region
  environment = "prod"

  bucket_kms_key_name      = google_kms_crypto_key.conveyor["images"].id
  bigquery_kms_key_name    = google_kms_crypto_key.conveyor["rows"].id
  dead_letter_kms_key_name = google_kms_crypto_key.conveyor["dead-letters"].id

  deletion_protection  = true
  bucket_force_destroy = false
  bucket_versioning    = true

  raw_retention_days        = 30
  outputs_retention_days    = 90
  partition_expiration_days = 400

  function_max_instances = 20
}

output "upload_command" {
  description = "How a camera uploads a photo."
  value       = module.conveyor.upload_command
}

output "objects_table" {
  description = "The per-object result rows."
  value       = module.conveyor.objects_table
}
