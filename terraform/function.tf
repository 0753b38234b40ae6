# The function (2nd gen), its object-finalize trigger on the images bucket, and its environment.

locals {
  # The function's environment: every variable segmentation/config.py reads (SETTINGS), except
  # the local-only ones (GEMINI_API_KEY, SQLITE_PATH). tests/test_terraform.py compares these
  # keys with SETTINGS, so a setting added to the code fails the tests until it is added here.
  function_environment = {
    SOURCE_PREFIX             = var.source_prefix
    CROPS_PREFIX              = var.crops_prefix
    OVERVIEW_PREFIX           = var.overview_prefix
    MARKERS_PREFIX            = var.markers_prefix
    OUTPUT_BUCKET             = local.output_bucket_setting
    BACKGROUNDS_PREFIX        = var.backgrounds_prefix
    SEARCH_PREFIX             = var.search_prefix
    SEARCH_RESULTS_PREFIX     = var.search_results_prefix
    DETECTOR                  = var.detector
    EMPTY_BELT_GATE_CAMERAS   = join(",", var.empty_belt_gate_cameras)
    OFFLINE_FALLBACK          = tostring(var.offline_fallback)
    EMBEDDER                  = var.embedder
    EMBEDDING_MODEL           = var.embedding_model
    EMBEDDING_DIMENSIONS      = tostring(var.embedding_dimensions)
    SEARCH_TOP_K              = tostring(var.search_top_k)
    SEARCH_RERANK             = tostring(var.search_rerank)
    GEMINI_BACKEND            = "vertex"
    GOOGLE_CLOUD_PROJECT      = var.project_id
    GOOGLE_CLOUD_LOCATION     = var.vertex_location
    GEMINI_MODEL              = var.gemini_model
    GEMINI_PROMPT             = var.gemini_prompt
    GEMINI_SYSTEM_INSTRUCTION = var.gemini_system_instruction
    GEMINI_TEMPERATURE        = var.gemini_temperature == null ? "" : tostring(var.gemini_temperature)
    GEMINI_THINKING_LEVEL     = var.gemini_thinking_level
    GEMINI_THINKING_BUDGET    = var.gemini_thinking_budget == null ? "" : tostring(var.gemini_thinking_budget)
    GEMINI_MEDIA_RESOLUTION   = var.gemini_media_resolution
    GEMINI_MAX_OBJECTS        = tostring(var.gemini_max_objects)
    GEMINI_MAX_OUTPUT_TOKENS  = tostring(var.gemini_max_output_tokens)
    GEMINI_TIMEOUT_S          = tostring(var.gemini_timeout_s)
    MODEL_INPUT_MAX_SIDE      = tostring(var.model_input_max_side)
    OUTPUT_TURNS              = tostring(var.output_turns)
    MAX_IMAGE_BYTES           = tostring(var.max_image_bytes)
    MAX_IMAGE_PIXELS          = tostring(var.max_image_pixels)
    MEMORY_LIMIT_MIB          = tostring(local.worker_memory_mib)
    DECODE_MEMORY_FRACTION    = tostring(var.decode_memory_fraction)
    RETRY_DEADLINE_S          = tostring(var.retry_deadline_s)
    GIVE_UP_AFTER_S           = tostring(var.give_up_after_s)
    CLAIM_LEASE_S             = tostring(var.function_timeout_seconds)
    BQ_OBJECTS_TABLE          = local.objects_table_id
    BQ_IMAGES_TABLE           = local.images_table_id
    BQ_EMBEDDINGS_TABLE       = local.embeddings_table_id
    BQ_SEARCH_MATCHES_TABLE   = local.search_matches_table_id
    LOG_LEVEL                 = upper(var.log_level)
  }

  cpu = tonumber(var.function_cpu)
  # Each worker process (WORKERS below) budgets its images' memory from its share of the instance's.
  worker_memory_mib = floor(local.memory_mib[var.function_memory] / max(1, floor(local.cpu)))

  # functions-framework's web server (gunicorn), not read by the code: one worker process per
  # whole vCPU, as Google advises for Python on Cloud Run (each process has its own GIL, so two
  # events' Python work no longer waits for each other on 2 vCPUs; BENCHMARKS.md, section 5),
  # each with a thread per concurrent request so that no worker queues events the other could take.
  server_environment = {
    WORKERS = tostring(max(1, floor(local.cpu)))
    THREADS = tostring(var.function_concurrency)
  }
}

resource "google_cloudfunctions2_function" "segmentation" {
  project     = var.project_id
  name        = local.function_name
  location    = var.region
  description = "Conveyor belt photos under gs://${local.images_bucket_name}/${var.source_prefix} -> Gemini detections -> crops, overview, BigQuery rows; lost-bag queries under ${var.search_prefix} -> matches."

  build_config {
    runtime         = "python311"
    entry_point     = "on_object_finalized"
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.function_source.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    available_memory                 = var.function_memory
    available_cpu                    = var.function_cpu
    timeout_seconds                  = var.function_timeout_seconds
    max_instance_count               = var.function_max_instances
    min_instance_count               = var.function_min_instances
    max_instance_request_concurrency = var.function_concurrency
    environment_variables            = merge(local.function_environment, local.server_environment)
    # Eventarc's push from the same project counts as internal traffic: nothing else may call it.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.runtime.email
  }

  event_trigger {
    trigger_region        = local.trigger_region
    event_type            = "google.cloud.storage.object.v1.finalized"
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.trigger.email

    event_filters {
      attribute = "bucket"
      value     = local.images_bucket_name
    }
  }

  lifecycle {
    precondition {
      condition     = var.retry_deadline_s + 60 <= var.function_timeout_seconds
      error_message = "retry_deadline_s must be at least 60 seconds below function_timeout_seconds, or the platform kills the function before it gives up and the event is redelivered only after the full timeout."
    }
    precondition {
      condition = alltrue([
        for prefix in concat(local.output_prefixes, [var.backgrounds_prefix]) :
        !startswith(prefix, var.source_prefix) && !startswith(var.source_prefix, prefix)
      ])
      error_message = "crops_prefix, overview_prefix, markers_prefix, search_results_prefix and backgrounds_prefix must not overlap source_prefix: the function would trigger itself on its own files."
    }
    # Queries are inputs too: search_prefix may overlap neither the uploads nor anything the function writes.
    precondition {
      condition = alltrue([
        for prefix in concat(local.output_prefixes, [var.backgrounds_prefix, var.source_prefix]) :
        !startswith(prefix, var.search_prefix) && !startswith(var.search_prefix, prefix)
      ])
      error_message = "search_prefix must not overlap source_prefix, backgrounds_prefix, crops_prefix, overview_prefix, markers_prefix or search_results_prefix: a query would be processed as a camera photo, or the function would search its own outputs."
    }
    precondition {
      condition     = var.function_concurrency == 1 || local.cpu >= 1
      error_message = "function_concurrency above 1 needs function_cpu of at least 1."
    }
    precondition {
      condition = (
        local.memory_mib[var.function_memory] <= 4096 ? true :
        local.memory_mib[var.function_memory] <= 8192 ? local.cpu >= 2 :
        local.memory_mib[var.function_memory] <= 16384 ? local.cpu >= 4 : local.cpu >= 8
      )
      error_message = "function_memory above 4Gi needs function_cpu of at least 2 (above 8Gi: 4, above 16Gi: 8)."
    }
    precondition {
      condition     = local.cpu < 4 || local.memory_mib[var.function_memory] >= (local.cpu >= 6 ? 4096 : 2048)
      error_message = "function_cpu 4 needs at least 2Gi of memory, and 6 or 8 need at least 4Gi."
    }
    # Gemini 3.6 and later are served only from global and the eu/us multi-regions (segmentation/models.py).
    precondition {
      condition     = !can(regex("^gemini-(3\\.([6-9]|[1-9][0-9])|[4-9]|[1-9][0-9])([.-]|$)", var.gemini_model)) || contains(["global", "eu", "us"], var.vertex_location)
      error_message = "gemini_model 3.6 and later run only in global or the eu/us multi-regions, not a single region: set vertex_location to global, eu or us (eu/us keep requests in that geography), or use gemini-3.5-flash to stay in one region."
    }
  }

  depends_on = [
    google_project_service.enabled,
    google_project_iam_member.build_builds_function,
    google_project_iam_member.trigger_receives_events,
    google_project_iam_member.gcs_agent_publishes_events,
  ]
}

# The trigger's identity may invoke this function's Cloud Run service, and nothing else.
resource "google_cloud_run_v2_service_iam_member" "trigger_invokes_function" {
  project  = var.project_id
  location = google_cloudfunctions2_function.segmentation.location
  name     = google_cloudfunctions2_function.segmentation.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.trigger.email}"
}
