# Remote state for dev: terraform -chdir=terraform init -reconfigure -backend-config=envs/dev.backend.hcl
# The state bucket must exist first (see the README's Deploy section); one bucket can hold every
# environment's state under its own prefix.
bucket = "my-conveyor-tfstate" # change me
prefix = "conveyor-segmentation/dev"
