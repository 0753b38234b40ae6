# Development: small, cheap, and easy to throw away.
#   terraform -chdir=terraform init -reconfigure -backend-config=envs/dev.backend.hcl
#   terraform -chdir=terraform apply -var-file=envs/dev.tfvars

project_id  = "my-conveyor-dev" # change me
region      = "europe-west1"
environment = "dev"

# Data protection off: terraform destroy removes the bucket with its objects and the tables with their rows.
deletion_protection  = false
bucket_force_destroy = true
bucket_versioning    = false

raw_retention_days        = 30
outputs_retention_days    = 30
partition_expiration_days = 90

function_memory        = "2Gi"
function_cpu           = "1"
function_concurrency   = 4
function_max_instances = 3

log_level = "DEBUG"

# Sharing prod's project instead of its own: set manage_shared_iam = false here (prod owns the
# project-wide grants, and destroying dev must not remove them).
manage_shared_iam = true
