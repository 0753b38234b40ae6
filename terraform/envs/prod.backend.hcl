# Remote state for prod: terraform -chdir=terraform init -reconfigure -backend-config=envs/prod.backend.hcl
bucket = "my-conveyor-tfstate" # change me
prefix = "conveyor-segmentation/prod"
