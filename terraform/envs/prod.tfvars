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

# Retention (the README's Deploy section says why): camera uploads 30 days, crops, overviews and
# markers 90 days, rows 400 days (a year and a month, for year-on-year reports). 0 keeps forever.
raw_retention_days        = 30
outputs_retention_days    = 90
partition_expiration_days = 400

# Customer-managed keys (empty: Google-managed), e.g.
# bucket_kms_key_name      = "projects/my-kms/locations/europe-west1/keyRings/conveyor/cryptoKeys/images"
# bigquery_kms_key_name    = "projects/my-kms/locations/europe-west1/keyRings/conveyor/cryptoKeys/rows"
# dead_letter_kms_key_name = "projects/my-kms/locations/europe-west1/keyRings/conveyor/cryptoKeys/events"

function_memory        = "4Gi"
function_cpu           = "2"
function_concurrency   = 8
function_max_instances = 20
function_min_instances = 0

log_level = "INFO"
