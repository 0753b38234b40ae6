# Identities and every grant, each on the narrowest resource that can carry it.
# No basic roles (owner/editor/viewer), nothing for allUsers or allAuthenticatedUsers.
# tests/test_terraform.py checks this file's grants against the list below.
#
# runtime SA (the function runs as it)
#   images bucket, objects under source_prefix,    roles/storage.objectViewer  (IAM condition)
#     backgrounds_prefix (empty-scene references)
#     and search_prefix (lost-bag queries)
#   images bucket, objects under the 4 output      roles/storage.objectUser    (IAM condition)
#     prefixes (search results included), and        only if separate_outputs_bucket = false
#     listing under crops_prefix
#   outputs bucket (outputs_bucket.tf)              roles/storage.objectUser    only if true
#   objects, images, embeddings, search_matches     custom role rowInserter    (bigquery.tables.updateData, .get)
#   embeddings table                                custom role rowReader      (bigquery.tables.getData)
#   project                                         custom role queryRunner    (bigquery.jobs.create)
#   project                                         custom role geminiCaller   (aiplatform.endpoints.predict:
#                                                     generateContent and embedContent)
# search_uploaders (var; people who look for lost bags)
#   images bucket, objects under search_prefix      roles/storage.objectCreator (IAM condition)
#   outputs bucket (the images bucket if single),   roles/storage.objectViewer  (IAM condition)
#     objects and listing under search_results_prefix
# trigger SA (Eventarc delivers events as it)
#   project                                         roles/eventarc.eventReceiver
#   the function's Cloud Run service                roles/run.invoker          (function.tf)
# build SA (Cloud Build builds the function's container as it)
#   project                                         roles/run.builder
# Cloud Storage service agent (publishes bucket notifications for the trigger)
#   project                                         roles/pubsub.publisher     (manage_shared_iam)
# Cloud Storage, BigQuery and Pub/Sub service agents, only with customer-managed keys
#   the images bucket's / dataset's / dead-letter   roles/cloudkms.cryptoKeyEncrypterDecrypter
#   topic's Cloud KMS key                                                      (manage_shared_iam)
# Pub/Sub service agent (dead-letters events the function never acknowledged; dead_letter.tf)
#   the dead-letter topic                           roles/pubsub.publisher
#   the trigger's Eventarc-managed subscription     roles/pubsub.subscriber    (gcloud, dead_letter.tf)
#
# Not granted: roles/logging.logWriter. Cloud Run collects the function's stdout/stderr (its
# structured logs) without any permission on the runtime identity.

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${local.base}-run"
  display_name = "Conveyor segmentation function (${var.environment})"
  description  = "Runs the function: reads camera uploads and lost-bag queries, writes crops/overviews/markers/search results, streams rows to BigQuery and searches its embeddings, calls Gemini on Vertex AI."

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "trigger" {
  project      = var.project_id
  account_id   = "${local.base}-trigger"
  display_name = "Conveyor segmentation trigger (${var.environment})"
  description  = "Eventarc delivers the images bucket's object-finalize events to the function as this account."

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "${local.base}-build"
  display_name = "Conveyor segmentation build (${var.environment})"
  description  = "Cloud Build builds the function's container image from the source archive as this account."

  depends_on = [google_project_service.enabled]
}

# --- Runtime: the images bucket ------------------------------------------------------------------
# Conditions need uniform bucket-level access (always on for a created bucket; checked for an
# existing one). Object permissions are checked against
# projects/_/buckets/BUCKET/objects/NAME, so startsWith on that name scopes them to a prefix.
#
# storage.objects.list is checked against the bucket, not an object, so no resource.name
# condition can match it. The function lists only under crops_prefix (the stale-crop clean-up in
# segmentation/pipeline.py), and Cloud Storage passes a list request's prefix to IAM as the API
# attribute storage.googleapis.com/objectListPrefix: the clause below allows a list only when
# that prefix starts with crops_prefix. Without a prefix, or with any other, listing is denied.
# (The alternatives were worse: an unconditional list grant or a custom role with
# storage.objects.list on the bucket would reveal every object name in the bucket.)

locals {
  runtime_member   = "serviceAccount:${google_service_account.runtime.email}"
  object_name_root = "projects/_/buckets/${local.images_bucket_name}/objects/"
  output_prefixes  = [var.crops_prefix, var.overview_prefix, var.markers_prefix, var.search_results_prefix]

  raw_read_condition = join(" || ", [
    for prefix in [var.source_prefix, var.backgrounds_prefix, var.search_prefix] : "resource.name.startsWith(\"${local.object_name_root}${prefix}\")"
  ])
  outputs_write_condition = join(" || ", concat(
    [for prefix in local.output_prefixes : "resource.name.startsWith(\"${local.object_name_root}${prefix}\")"],
    ["api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"${var.crops_prefix}\")"],
  ))
}

resource "google_storage_bucket_iam_member" "runtime_reads_uploads" {
  bucket = local.images_bucket_name
  role   = "roles/storage.objectViewer"
  member = local.runtime_member

  condition {
    title       = "read-${trimsuffix(replace(var.source_prefix, "/", "-"), "-")}"
    description = "Read camera uploads (exact generations and their metadata) under ${var.source_prefix}, the empty-scene references under ${var.backgrounds_prefix} and lost-bag queries under ${var.search_prefix} only."
    expression  = local.raw_read_condition
  }
}

# Only in the single-bucket layout; with separate_outputs_bucket the runtime account writes the
# outputs bucket instead (outputs_bucket.tf) and may not write here at all.
resource "google_storage_bucket_iam_member" "runtime_writes_outputs" {
  count = var.separate_outputs_bucket ? 0 : 1

  bucket = local.images_bucket_name
  role   = "roles/storage.objectUser"
  member = local.runtime_member

  condition {
    title       = "write-outputs"
    description = "Create, overwrite, read and delete crops, overviews, completion markers and search results; list under ${var.crops_prefix} only."
    expression  = local.outputs_write_condition
  }
}

# --- Runtime: custom roles -----------------------------------------------------------------------
# Predefined roles would give far more than the function uses: aiplatform.user creates and changes
# Vertex AI resources, bigquery.dataEditor reads every row and updates or deletes the tables,
# bigquery.jobUser and dataViewer on the dataset would let it read every table. These roles hold
# only what the function's API calls need (tests/test_terraform_security.py and
# tests/test_search_bigquery.py record the calls through the real clients and compare):
#   models.generateContent, models.embedContent        aiplatform.endpoints.predict
#     (google-genai, Vertex mode)
#   tabledata.insertAll (insert_rows_json)             bigquery.tables.updateData, bigquery.tables.get
#   jobs.query (query_and_wait: VECTOR_SEARCH over     bigquery.jobs.create (project),
#     the embeddings table)                            bigquery.tables.getData (that table)
# Google lists bigquery.tables.get (and bigquery.datasets.get) as required for streaming inserts;
# the client never reads the table (insert_rows_json takes the id as a string). A table-level
# binding cannot carry datasets.get, and insertAll is authorised on the table, as the previous
# dataEditor-on-table grant showed. Role ids are per environment: custom roles are project-wide.

locals {
  role_id_prefix = "conveyor_${replace(var.environment, "-", "_")}${var.custom_role_suffix}"
}

resource "google_project_iam_custom_role" "gemini_caller" {
  project     = var.project_id
  role_id     = "${local.role_id_prefix}_geminiCaller"
  title       = "Conveyor segmentation: call Gemini (${var.environment})"
  description = "Prompt and embedding requests (generateContent, embedContent) to Vertex AI publisher models, nothing else."
  permissions = ["aiplatform.endpoints.predict"]

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_custom_role" "row_inserter" {
  project     = var.project_id
  role_id     = "${local.role_id_prefix}_rowInserter"
  title       = "Conveyor segmentation: stream rows (${var.environment})"
  description = "Streaming inserts (tabledata.insertAll) into a table; no reads of rows, no table changes."
  permissions = ["bigquery.tables.get", "bigquery.tables.updateData"]

  depends_on = [google_project_service.enabled]
}

# Lost-bag search runs one query job per search; what a query may read is granted per table.
resource "google_project_iam_custom_role" "query_runner" {
  project     = var.project_id
  role_id     = "${local.role_id_prefix}_queryRunner"
  title       = "Conveyor segmentation: run search queries (${var.environment})"
  description = "Query jobs (jobs.query) billed to the project; the tables a query may read are granted on each table."
  permissions = ["bigquery.jobs.create"]

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_custom_role" "row_reader" {
  project     = var.project_id
  role_id     = "${local.role_id_prefix}_rowReader"
  title       = "Conveyor segmentation: read rows in queries (${var.environment})"
  description = "Read a table's rows in a query (VECTOR_SEARCH over the embeddings); no inserts, no table changes."
  permissions = ["bigquery.tables.getData"]

  depends_on = [google_project_service.enabled]
}

# --- Runtime: BigQuery ---------------------------------------------------------------------------
# The row inserter role on each table (not the dataset, not the project); the row reader role on
# the embeddings table only, and query jobs on the project (a job can only be created there).
# create_before_destroy: a role change adds the new grant before the old one goes, so no event
# meets a missing permission during the apply.

resource "google_bigquery_table_iam_member" "runtime_inserts_objects" {
  project    = google_bigquery_table.objects.project
  dataset_id = google_bigquery_table.objects.dataset_id
  table_id   = google_bigquery_table.objects.table_id
  role       = google_project_iam_custom_role.row_inserter.name
  member     = local.runtime_member

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_bigquery_table_iam_member" "runtime_inserts_images" {
  project    = google_bigquery_table.images.project
  dataset_id = google_bigquery_table.images.dataset_id
  table_id   = google_bigquery_table.images.table_id
  role       = google_project_iam_custom_role.row_inserter.name
  member     = local.runtime_member

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_bigquery_table_iam_member" "runtime_inserts_embeddings" {
  project    = google_bigquery_table.embeddings.project
  dataset_id = google_bigquery_table.embeddings.dataset_id
  table_id   = google_bigquery_table.embeddings.table_id
  role       = google_project_iam_custom_role.row_inserter.name
  member     = local.runtime_member

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_bigquery_table_iam_member" "runtime_inserts_search_matches" {
  project    = google_bigquery_table.search_matches.project
  dataset_id = google_bigquery_table.search_matches.dataset_id
  table_id   = google_bigquery_table.search_matches.table_id
  role       = google_project_iam_custom_role.row_inserter.name
  member     = local.runtime_member

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_bigquery_table_iam_member" "runtime_reads_embeddings" {
  project    = google_bigquery_table.embeddings.project
  dataset_id = google_bigquery_table.embeddings.dataset_id
  table_id   = google_bigquery_table.embeddings.table_id
  role       = google_project_iam_custom_role.row_reader.name
  member     = local.runtime_member

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_project_iam_member" "runtime_runs_queries" {
  project = var.project_id
  role    = google_project_iam_custom_role.query_runner.name
  member  = local.runtime_member

  lifecycle {
    create_before_destroy = true
  }
}

# --- Runtime: Vertex AI --------------------------------------------------------------------------
# Gemini is a publisher model (projects/PROJECT/locations/LOCATION/publishers/google/models/...),
# which has no IAM policy of its own: aiplatform.endpoints.predict on it can only be granted on
# the project.

resource "google_project_iam_member" "runtime_calls_vertex" {
  project = var.project_id
  role    = google_project_iam_custom_role.gemini_caller.name
  member  = local.runtime_member

  lifecycle {
    create_before_destroy = true
  }
}

# --- Lost-bag search: the people who search ------------------------------------------------------
# search_uploaders may add queries under search_prefix (create only: no reading, overwriting or
# deleting anyone's query) and read and list the results under search_results_prefix, wherever the
# function writes them (the outputs bucket, or the images bucket in the single-bucket layout). Both
# buckets have uniform bucket-level access (storage.tf checks an existing images bucket), which IAM
# conditions need. Listing is checked on the bucket, so the clause on the list prefix allows it
# under search_results_prefix only.

locals {
  search_results_object_root = "projects/_/buckets/${local.outputs_bucket_name}/objects/"
  search_results_read_condition = "resource.name.startsWith(\"${local.search_results_object_root}${var.search_results_prefix}\") || api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"${var.search_results_prefix}\")"
}

resource "google_storage_bucket_iam_member" "search_uploaders_add_queries" {
  for_each = toset(var.search_uploaders)

  bucket = local.images_bucket_name
  role   = "roles/storage.objectCreator"
  member = each.value

  condition {
    title       = "add-search-queries"
    description = "Upload lost-bag queries (photos, .txt/.json descriptions) under ${var.search_prefix} only."
    expression  = "resource.name.startsWith(\"${local.object_name_root}${var.search_prefix}\")"
  }
}

resource "google_storage_bucket_iam_member" "search_uploaders_read_results" {
  for_each = toset(var.search_uploaders)

  bucket = local.outputs_bucket_name
  role   = "roles/storage.objectViewer"
  member = each.value

  condition {
    title       = "read-search-results"
    description = "Read and list lost-bag search results (JSON, contact sheets) under ${var.search_results_prefix} only."
    expression  = local.search_results_read_condition
  }
}

# --- Trigger ---------------------------------------------------------------------------------------
# Receiving Eventarc events is a project-level permission (eventarc.events.receiveEvent has no
# narrower resource). Invoking the function is granted on its Cloud Run service only (function.tf).

resource "google_project_iam_member" "trigger_receives_events" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = "serviceAccount:${google_service_account.trigger.email}"
}

# --- Build -----------------------------------------------------------------------------------------
# Since 2024 new projects no longer give Cloud Build a broadly privileged default account, so the
# function names its own build account. Cloud Run Builder is Google's documented role for a
# function's build account; it can only be granted on the project, because the build reads the
# source from Google-managed buckets (gcf-v2-sources-*) and pushes to the Google-managed
# gcf-artifacts repository, neither of which this configuration owns.

resource "google_project_iam_member" "build_builds_function" {
  project = var.project_id
  role    = "roles/run.builder"
  member  = "serviceAccount:${google_service_account.build.email}"
}

# --- Cloud Storage service agent -------------------------------------------------------------------
# Cloud Storage triggers are delivered through Pub/Sub notifications that the project's Cloud
# Storage service agent publishes; Eventarc creates the topic, so the grant is on the project.

data "google_storage_project_service_account" "gcs_agent" {
  project = var.project_id

  depends_on = [google_project_service.enabled]
}

# Project-wide, so every environment in the project would own the same binding and destroying one
# would remove it for the others: only the environment with manage_shared_iam = true manages it.
resource "google_project_iam_member" "gcs_agent_publishes_events" {
  count = var.manage_shared_iam ? 1 : 0

  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs_agent.email_address}"
}

moved {
  from = google_project_iam_member.gcs_agent_publishes_events
  to   = google_project_iam_member.gcs_agent_publishes_events[0]
}

# --- Customer-managed encryption keys ----------------------------------------------------------------
# With a key set, the service agent of the service that encrypts with it may use it. The binding
# is on the key; environments of one project sharing a key would share it (manage_shared_iam).

data "google_bigquery_default_service_account" "bq_agent" {
  count   = var.bigquery_kms_key_name != "" ? 1 : 0
  project = var.project_id

  depends_on = [google_project_service.enabled]
}

locals {
  kms_grants = {
    for name, grant in {
      bucket = {
        key    = var.create_bucket || var.separate_outputs_bucket ? var.bucket_kms_key_name : ""
        member = "serviceAccount:${data.google_storage_project_service_account.gcs_agent.email_address}"
      }
      dataset = {
        key    = var.bigquery_kms_key_name
        member = "serviceAccount:${join("", data.google_bigquery_default_service_account.bq_agent[*].email)}"
      }
      dead_letter = {
        key    = var.dead_letter_kms_key_name
        member = local.pubsub_agent_member
      }
    } : name => grant if var.manage_shared_iam && grant.key != ""
  }
}

resource "google_kms_crypto_key_iam_member" "service_agents_use_keys" {
  for_each = local.kms_grants

  crypto_key_id = each.value.key
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value.member
}
