# A throw-away dev environment in a project that prod shares: its own names (bucket, dataset
# conveyor_dev, accounts, custom roles), its data deleted on destroy, and the project-wide grants
# left to prod (manage_shared_iam = false), so destroying dev never removes them.
#
#   terraform init -backend-config="bucket=my-conveyor-tfstate" -backend-config="prefix=conveyor-segmentation/example-dev"
#   terraform apply -var project_id=my-conveyor

terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  backend "gcs" {}
}

variable "project_id" {
  description = "The project prod already runs in."
  type        = string
}

module "conveyor" {
  source = "../.."

  project_id  = var.project_id
  region      = "europe-west1"
  environment = "dev"

  manage_shared_iam = false

  deletion_protection  = false
  bucket_force_destroy = true

  raw_retention_days        = 7
  outputs_retention_days    = 7
  partition_expiration_days = 30

  function_memory        = "2Gi"
  function_cpu           = "1"
  function_concurrency   = 4
  function_max_instances = 3
  log_level              = "DEBUG"
}

output "upload_command" {
  description = "How to upload a test photo."
  value       = module.conveyor.upload_command
}

output "images_table" {
  description = "The per-image result rows."
  value       = module.conveyor.images_table
}
