# Production.
#   terraform -chdir=terraform init -reconfigure -backend-config=envs/prod.backend.hcl
#   terraform -chdir=terraform apply -var-file=envs/prod.tfvars

project_id  = "my-conveyor-prod" # change me
region      = "europe-west1"
environment = "prod"

# Data protection on: terraform destroy refuses to delete the tables and a non-empty images bucket.
deletion_protection               = true
bucket_force_destroy              = false
bucket_versioning                 = true
noncurrent_version_retention_days = 30

raw_retention_days        = 0 # keep camera uploads
outputs_retention_days    = 0
partition_expiration_days = 0 # keep rows

function_memory        = "4Gi"
function_cpu           = "2"
function_concurrency   = 8
function_max_instances = 20
function_min_instances = 0

log_level = "INFO"
