# Terraform and provider versions, and the remote state backend.
#
# The backend is a partial configuration: each environment supplies its own bucket and prefix
# with `terraform init -backend-config=envs/ENV.backend.hcl` (see the README's Deploy section).
# Commit the `.terraform.lock.hcl` that the first `terraform init` writes, so every machine
# uses the same provider builds.

terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.46"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7"
    }
  }

  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region

  # Every resource that takes labels gets these; resources add their own on top.
  default_labels = merge(var.labels, {
    app         = "conveyor-segmentation"
    environment = var.environment
    managed-by  = "terraform"
  })
}
