# Inputs. envs/dev.tfvars and envs/prod.tfvars set the ones that differ per environment.
#
# The function's runtime settings (prefixes, Gemini, limits) default to the code's own defaults
# in segmentation/config.py; tests/test_terraform.py checks that they stay equal.

# --- Project and naming ----------------------------------------------------------------------

variable "project_id" {
  description = "ID of the Google Cloud project everything is created in."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 characters: lowercase letters, digits, hyphens), not a project name or number."
  }
}

variable "region" {
  description = "Region of the function, its source bucket and (by default) the images bucket and the BigQuery dataset, e.g. europe-west1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+(-[a-z]+)+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1 or us-central1 (not a zone such as europe-west1-b, not a multi-region)."
  }
}

variable "environment" {
  description = "Short environment name (dev, prod, ...). Part of every resource name, so several environments can share a project."
  type        = string

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,6}[a-z0-9])?$", var.environment))
    error_message = "environment must be 1-8 characters: lowercase letters, digits and inner hyphens."
  }
}

variable "manage_shared_iam" {
  description = "Manage the project-wide grants every environment of the project needs (the Cloud Storage service agent's roles/pubsub.publisher, and the service agents' use of the customer-managed keys). Several environments in one project: true in exactly one of them, false in the others, or destroying one removes the grant for all."
  type        = bool
  default     = true
}

variable "custom_role_suffix" {
  description = "Appended to the runtime account's custom role ids (conveyor_ENVIRONMENT_geminiCaller, ..._rowInserter). A deleted custom role's id cannot be reused for up to 37 days: set a suffix such as \"_v2\" to recreate an environment in that window."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[A-Za-z0-9_]{0,16}$", var.custom_role_suffix))
    error_message = "custom_role_suffix must be at most 16 letters, digits or underscores."
  }
}

variable "labels" {
  description = "Extra labels for every resource that takes labels (app, environment and managed-by are always set)."
  type        = map(string)
  default     = {}
}

# --- Images bucket ---------------------------------------------------------------------------

variable "create_bucket" {
  description = "Create the images bucket. Set to false to use an existing bucket named bucket_name (it must have uniform bucket-level access)."
  type        = bool
  default     = true
}

variable "bucket_name" {
  description = "Name of the images bucket. Empty: PROJECT_ID-conveyor-ENVIRONMENT-images. Required when create_bucket is false."
  type        = string
  default     = ""

  validation {
    condition     = var.bucket_name == "" || can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid bucket name: 3-63 characters, lowercase letters, digits, '-', '_' and '.'."
  }
}

variable "bucket_location" {
  description = "Location of a created images bucket: a region (default: region) or a multi-region such as EU. The trigger is created in the bucket's location."
  type        = string
  default     = ""

  validation {
    condition     = var.bucket_location == "" || can(regex("^([A-Za-z]+(-[A-Za-z]+)+[0-9]+|[A-Za-z]+[0-9]*)$", var.bucket_location))
    error_message = "bucket_location must be a region (europe-west1), a dual-region (EUR4) or a multi-region (EU, US, ASIA)."
  }
}

variable "separate_outputs_bucket" {
  description = "Write crops, overviews, completion markers and claims to a bucket of their own (outputs_bucket.tf), so the function's writes fire no events and it needs no write access to the images bucket. false: the single-bucket layout (outputs under their prefixes in the images bucket; N + 3 ignored invocations per image). Switching an existing deployment changes where new outputs go: see the README's Deploy section."
  type        = bool
  default     = true
}

variable "outputs_bucket_name" {
  description = "Name of the outputs bucket (separate_outputs_bucket). Empty: PROJECT-conveyor-ENVIRONMENT-outputs."
  type        = string
  default     = ""
}

variable "bucket_versioning" {
  description = "Keep noncurrent versions of overwritten or deleted objects in the images bucket."
  type        = bool
  default     = false
}

variable "bucket_force_destroy" {
  description = "Let terraform destroy delete the images bucket with every object in it. Keep false where the images matter (prod)."
  type        = bool
  default     = false
}

variable "raw_retention_days" {
  description = "Delete camera uploads under source_prefix this many days after upload. 0 keeps them forever."
  type        = number
  default     = 30

  validation {
    condition     = var.raw_retention_days >= 0 && floor(var.raw_retention_days) == var.raw_retention_days
    error_message = "raw_retention_days must be a whole number of days, 0 or more."
  }
}

variable "outputs_retention_days" {
  description = "Delete crops, overviews and completion markers this many days after they were written. 0 keeps them forever."
  type        = number
  default     = 90

  validation {
    condition     = var.outputs_retention_days >= 0 && floor(var.outputs_retention_days) == var.outputs_retention_days
    error_message = "outputs_retention_days must be a whole number of days, 0 or more."
  }
}

variable "bucket_kms_key_name" {
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) that encrypts new objects in a created images bucket and in the outputs bucket; it must be in the buckets' location. Empty: Google-managed keys."
  type        = string
  default     = ""

  validation {
    condition     = var.bucket_kms_key_name == "" || can(regex("^projects/[a-z0-9-]+/locations/[a-z0-9-]+/keyRings/[A-Za-z0-9_-]+/cryptoKeys/[A-Za-z0-9_-]+$", var.bucket_kms_key_name))
    error_message = "bucket_kms_key_name must be empty or a Cloud KMS key: projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY."
  }
}

variable "noncurrent_version_retention_days" {
  description = "With bucket_versioning, delete noncurrent object versions this many days after they became noncurrent. 0 keeps them forever."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 0 && floor(var.noncurrent_version_retention_days) == var.noncurrent_version_retention_days
    error_message = "noncurrent_version_retention_days must be a whole number of days, 0 or more."
  }
}

# --- Object prefixes (SOURCE_PREFIX, CROPS_PREFIX, OVERVIEW_PREFIX, MARKERS_PREFIX, BACKGROUNDS_PREFIX,
# SEARCH_PREFIX, SEARCH_RESULTS_PREFIX)
# Letters, digits, '.', '_', '-' and '/' only: they are also written into IAM condition expressions.

variable "source_prefix" {
  description = "SOURCE_PREFIX: cameras upload under this prefix; only objects under it are processed. Must end with '/'."
  type        = string
  default     = "raw/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", var.source_prefix))
    error_message = "source_prefix must be non-empty, end with '/', not start with '/', and use only letters, digits, '.', '_', '-' and '/'."
  }
}

variable "crops_prefix" {
  description = "CROPS_PREFIX: where one JPEG crop per object is written. Must end with '/'."
  type        = string
  default     = "processed/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", var.crops_prefix))
    error_message = "crops_prefix must be non-empty, end with '/', not start with '/', and use only letters, digits, '.', '_', '-' and '/'."
  }
}

variable "overview_prefix" {
  description = "OVERVIEW_PREFIX: where the annotated overview of each image is written. Must end with '/'."
  type        = string
  default     = "processed-overview/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", var.overview_prefix))
    error_message = "overview_prefix must be non-empty, end with '/', not start with '/', and use only letters, digits, '.', '_', '-' and '/'."
  }
}

variable "markers_prefix" {
  description = "MARKERS_PREFIX: where completion markers are written. Must end with '/'."
  type        = string
  default     = "processed-markers/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", var.markers_prefix))
    error_message = "markers_prefix must be non-empty, end with '/', not start with '/', and use only letters, digits, '.', '_', '-' and '/'."
  }
}

variable "backgrounds_prefix" {
  description = "BACKGROUNDS_PREFIX: optional photos of each camera's empty scene, {prefix}{camera}.jpg, read by the offline detector and the empty-belt gate. Must end with '/'."
  type        = string
  default     = "backgrounds/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", var.backgrounds_prefix))
    error_message = "backgrounds_prefix must be non-empty, end with '/', not start with '/', and use only letters, digits, '.', '_', '-' and '/'."
  }
}

variable "search_prefix" {
  description = "SEARCH_PREFIX: lost-bag queries (a photo, or a .txt/.json description) uploaded under this prefix of the images bucket are searched for among the indexed crops. Must end with '/' and not overlap source_prefix or the output prefixes."
  type        = string
  default     = "search/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", var.search_prefix))
    error_message = "search_prefix must be non-empty, end with '/', not start with '/', and use only letters, digits, '.', '_', '-' and '/'."
  }
}

variable "search_results_prefix" {
  description = "SEARCH_RESULTS_PREFIX: where a query's results JSON and contact sheet go, in the outputs bucket (the images bucket when separate_outputs_bucket = false). Must end with '/'."
  type        = string
  default     = "search-results/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", var.search_results_prefix))
    error_message = "search_results_prefix must be non-empty, end with '/', not start with '/', and use only letters, digits, '.', '_', '-' and '/'."
  }
}

# --- Detectors ---------------------------------------------------------------------------------

variable "detector" {
  description = "DETECTOR: gemini, or offline (the weight-free belt detector for every image, no model calls)."
  type        = string
  default     = "gemini"

  validation {
    condition     = contains(["gemini", "offline"], var.detector)
    error_message = "detector must be gemini or offline."
  }
}

variable "empty_belt_gate_cameras" {
  description = "EMPTY_BELT_GATE_CAMERAS: cameras (folders under the source prefix; \"*\" = all) whose frames the empty-belt gate compares with the camera's empty-scene reference (backgrounds/<camera>.jpg) before calling Gemini; a frame showing only the empty scene is recorded as empty without a model call. Empty list: the gate is off. A camera without a reference is always sent to the model."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for c in var.empty_belt_gate_cameras : c == "*" || (length(c) > 0 && !strcontains(c, "/") && !strcontains(c, ","))])
    error_message = "empty_belt_gate_cameras: camera folder names (no slash or comma), or \"*\"."
  }
}

variable "offline_fallback" {
  description = "OFFLINE_FALLBACK: when Gemini keeps failing past retry_deadline_s, process the image with the offline detector (rows say detector = offline) instead of failing for redelivery. Off by default: on real photos that are not plain belts its rows are guesses."
  type        = bool
  default     = false
}

# --- Lost-bag search (EMBEDDER, EMBEDDING_*, SEARCH_*; who may search, and for how long) -------

variable "embedder" {
  description = "EMBEDDER: how each crop is indexed for lost-bag search: gemini (multimodal embeddings on Vertex AI), descriptor (the weight-free colour, texture and shape descriptor), off (no indexing), or auto (gemini, as the function always has a Vertex backend)."
  type        = string
  default     = "auto"

  validation {
    condition     = contains(["auto", "gemini", "descriptor", "off"], var.embedder)
    error_message = "embedder must be auto, gemini, descriptor or off."
  }
}

variable "embedding_model" {
  description = "EMBEDDING_MODEL: the Gemini embedding model (multimodal: crops and text queries share one space)."
  type        = string
  default     = "gemini-embedding-2"

  validation {
    condition     = length(trimspace(var.embedding_model)) > 0
    error_message = "embedding_model must not be empty."
  }
}

variable "embedding_dimensions" {
  description = "EMBEDDING_DIMENSIONS: length of the Gemini embeddings, 128-3072. Crops indexed with one length are searched only with that length; the vector index covers one length (terraform/README.md, Lost-bag search, before changing it on a deployment)."
  type        = number
  default     = 768

  validation {
    condition     = var.embedding_dimensions >= 128 && var.embedding_dimensions <= 3072 && floor(var.embedding_dimensions) == var.embedding_dimensions
    error_message = "embedding_dimensions must be a whole number from 128 to 3072."
  }
}

variable "search_top_k" {
  description = "SEARCH_TOP_K: matches written per query (results file, contact sheet, search_matches rows)."
  type        = number
  default     = 10

  validation {
    condition     = var.search_top_k >= 1 && var.search_top_k <= 100 && floor(var.search_top_k) == var.search_top_k
    error_message = "search_top_k must be a whole number from 1 to 100."
  }
}

variable "search_rerank" {
  description = "SEARCH_RERANK: ask Gemini to compare a photo query with each of the 20 best candidates and reorder them (one extra model call per query)."
  type        = bool
  default     = false
}

variable "search_uploaders" {
  description = "Who may search: IAM members (e.g. group:lost-and-found@example.com, user:..., serviceAccount:...) that may create objects under search_prefix in the images bucket and read (and list) the results under search_results_prefix, nothing else. Empty: nobody but the project's own admins."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.search_uploaders : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):[^\\s]+$", m))])
    error_message = "search_uploaders must be IAM members such as group:lost-and-found@example.com, user:name@example.com or serviceAccount:...; public members are not allowed."
  }
}

variable "search_retention_days" {
  description = "Delete query photos and descriptions under search_prefix, their results under search_results_prefix and their search_matches rows (partition expiry) this many days after the query. 0 keeps them forever. Applies to a created images bucket; an existing one keeps its own lifecycle rules."
  type        = number
  default     = 30

  validation {
    condition     = var.search_retention_days >= 0 && floor(var.search_retention_days) == var.search_retention_days
    error_message = "search_retention_days must be a whole number of days, 0 or more."
  }
}

# --- BigQuery --------------------------------------------------------------------------------

variable "dataset_id" {
  description = "BigQuery dataset that holds the objects and images tables. Empty: conveyor_ENVIRONMENT (hyphens as underscores), so environments sharing a project get their own. Deployments made before this default changed set \"conveyor\" to keep their dataset."
  type        = string
  default     = ""

  validation {
    condition     = var.dataset_id == "" || can(regex("^[A-Za-z_][A-Za-z0-9_]{0,1023}$", var.dataset_id))
    error_message = "dataset_id may contain only letters, digits and underscores, and must not start with a digit."
  }
}

variable "bigquery_location" {
  description = "Location of the BigQuery dataset: a region or the EU/US multi-region. Empty: region."
  type        = string
  default     = ""
}

variable "partition_expiration_days" {
  description = "Drop table partitions (days of processed_at) older than this. 0 keeps rows forever."
  type        = number
  default     = 400

  validation {
    condition     = var.partition_expiration_days >= 0 && floor(var.partition_expiration_days) == var.partition_expiration_days
    error_message = "partition_expiration_days must be a whole number of days, 0 or more."
  }
}

variable "bigquery_kms_key_name" {
  description = "Cloud KMS key that encrypts the dataset's tables (the dataset's default key; it applies to tables created after it is set). It must be in the dataset's location. Empty: Google-managed keys."
  type        = string
  default     = ""

  validation {
    condition     = var.bigquery_kms_key_name == "" || can(regex("^projects/[a-z0-9-]+/locations/[a-z0-9-]+/keyRings/[A-Za-z0-9_-]+/cryptoKeys/[A-Za-z0-9_-]+$", var.bigquery_kms_key_name))
    error_message = "bigquery_kms_key_name must be empty or a Cloud KMS key: projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the BigQuery tables (terraform destroy fails on them) and keep the dataset's contents. true in prod."
  type        = bool
  default     = true
}

# --- Function --------------------------------------------------------------------------------

variable "function_name" {
  description = "Name of the Cloud Function. Empty: conveyor-segmentation-ENVIRONMENT."
  type        = string
  default     = ""

  validation {
    condition     = var.function_name == "" || can(regex("^[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.function_name))
    error_message = "function_name must be 2-63 characters: lowercase letters, digits and inner hyphens, starting with a letter."
  }
}

variable "function_memory" {
  description = "Memory of one function instance. Each concurrent request holds a decoded image (up to MAX_IMAGE_PIXELS x 3 bytes) and its crops."
  type        = string
  default     = "4Gi"

  validation {
    condition     = contains(["256Mi", "512Mi", "1Gi", "2Gi", "4Gi", "8Gi", "16Gi", "32Gi"], var.function_memory)
    error_message = "function_memory must be one of 256Mi, 512Mi, 1Gi, 2Gi, 4Gi, 8Gi, 16Gi, 32Gi."
  }
}

variable "decode_memory_fraction" {
  description = "DECODE_MEMORY_FRACTION: share of a worker process's memory (function_memory / worker processes) that its concurrent events' decoded images may hold together; the rest is kept for the process, downloads and outputs."
  type        = number
  default     = 0.6

  validation {
    condition     = var.decode_memory_fraction > 0 && var.decode_memory_fraction <= 1
    error_message = "decode_memory_fraction must be above 0 and at most 1."
  }
}

variable "function_cpu" {
  description = "vCPUs of one function instance. More than one concurrent request per instance needs at least 1; above 4Gi of memory needs 2, above 8Gi 4, above 16Gi 8."
  type        = string
  default     = "2"

  validation {
    condition     = contains(["0.583", "1", "2", "4", "6", "8"], var.function_cpu)
    error_message = "function_cpu must be one of 0.583, 1, 2, 4, 6, 8."
  }
}

variable "function_timeout_seconds" {
  description = "Function timeout. 540 is the maximum for event-driven functions. retry_deadline_s must leave at least 60 seconds of it."
  type        = number
  default     = 540

  validation {
    condition     = var.function_timeout_seconds >= 60 && var.function_timeout_seconds <= 540 && floor(var.function_timeout_seconds) == var.function_timeout_seconds
    error_message = "function_timeout_seconds must be a whole number from 60 to 540 (the limit for event-driven functions)."
  }
}

variable "function_max_instances" {
  description = "Most function instances at once; with function_concurrency this caps parallel Gemini calls (and cost)."
  type        = number
  default     = 10

  validation {
    condition     = var.function_max_instances >= 1 && var.function_max_instances <= 1000 && floor(var.function_max_instances) == var.function_max_instances
    error_message = "function_max_instances must be a whole number from 1 to 1000."
  }
}

variable "function_min_instances" {
  description = "Instances kept warm (billed while idle). 0 scales to zero."
  type        = number
  default     = 0

  validation {
    condition     = var.function_min_instances >= 0 && floor(var.function_min_instances) == var.function_min_instances
    error_message = "function_min_instances must be a whole number, 0 or more."
  }
}

variable "function_concurrency" {
  description = "Events one instance handles at once. Most of a request is spent waiting for Gemini, so several per instance is cheaper than one."
  type        = number
  default     = 8

  validation {
    condition     = var.function_concurrency >= 1 && var.function_concurrency <= 1000 && floor(var.function_concurrency) == var.function_concurrency
    error_message = "function_concurrency must be a whole number from 1 to 1000."
  }
}

# --- Gemini and limits (the function's environment; defaults = segmentation/config.py) -------

variable "vertex_location" {
  description = "GOOGLE_CLOUD_LOCATION: Vertex AI location for Gemini calls: global, the eu/us multi-regions (data residency), or a single region such as europe-west4 (gemini-3.5-flash and older only)."
  type        = string
  default     = "global"

  validation {
    condition     = can(regex("^(global|[a-z]+(-[a-z]+)+[0-9]+|us|eu)$", var.vertex_location))
    error_message = "vertex_location must be global, a region such as us-central1, or us/eu."
  }
}

variable "gemini_model" {
  description = "GEMINI_MODEL: model id."
  type        = string
  default     = "gemini-3.5-flash"

  validation {
    condition     = length(trimspace(var.gemini_model)) > 0
    error_message = "gemini_model must not be empty."
  }
}

variable "gemini_prompt" {
  description = "GEMINI_PROMPT: what to detect, sent with each image."
  type        = string
  default     = "Detect bags and luggage only."
}

variable "gemini_system_instruction" {
  description = "GEMINI_SYSTEM_INSTRUCTION: system instruction; {max_objects} is replaced by gemini_max_objects."
  type        = string
  default     = "You detect objects on a conveyor belt in a photo from a fixed camera. Return a JSON array of at most {max_objects} objects. For each object give: \"box_2d\" as [ymin, xmin, ymax, xmax] normalized to 0-1000; \"label\", a short name of the object; \"color\", its dominant colour in one or two words; \"general_description\", one short sentence; \"detailed_description\", two or three sentences on material, shape, size and distinguishing marks. If an object appears several times, give each instance its own entry. Return an empty array if nothing matches. Never return masks or code fencing."
}

variable "gemini_temperature" {
  description = "GEMINI_TEMPERATURE: sampling temperature. null sends none (Google's advice for 3.x models)."
  type        = number
  default     = null

  validation {
    condition     = var.gemini_temperature == null || (coalesce(var.gemini_temperature, 0) >= 0 && coalesce(var.gemini_temperature, 0) <= 2)
    error_message = "gemini_temperature must be null or between 0 and 2."
  }
}

variable "gemini_thinking_level" {
  description = "GEMINI_THINKING_LEVEL: thinking level for 3.x models (minimal, low, medium, high); empty sends none."
  type        = string
  default     = "minimal"

  validation {
    condition     = contains(["", "minimal", "low", "medium", "high"], var.gemini_thinking_level)
    error_message = "gemini_thinking_level must be one of \"\", minimal, low, medium, high."
  }
}

variable "gemini_thinking_budget" {
  description = "GEMINI_THINKING_BUDGET: thinking budget in tokens for 2.x models (0 = off); null sends none."
  type        = number
  default     = 0

  validation {
    condition     = var.gemini_thinking_budget == null || (coalesce(var.gemini_thinking_budget, 0) >= -1 && floor(coalesce(var.gemini_thinking_budget, 0)) == coalesce(var.gemini_thinking_budget, 0))
    error_message = "gemini_thinking_budget must be null or a whole number (-1 lets the model decide)."
  }
}

variable "gemini_media_resolution" {
  description = "GEMINI_MEDIA_RESOLUTION: low, medium or high; empty sends none."
  type        = string
  default     = "high"

  validation {
    condition     = contains(["", "low", "medium", "high"], var.gemini_media_resolution)
    error_message = "gemini_media_resolution must be one of \"\", low, medium, high."
  }
}

variable "gemini_max_objects" {
  description = "GEMINI_MAX_OBJECTS: most objects asked for per image."
  type        = number
  default     = 25

  validation {
    condition     = var.gemini_max_objects >= 1 && floor(var.gemini_max_objects) == var.gemini_max_objects
    error_message = "gemini_max_objects must be a whole number, 1 or more."
  }
}

variable "gemini_max_output_tokens" {
  description = "GEMINI_MAX_OUTPUT_TOKENS: output-token limit per call."
  type        = number
  default     = 8192

  validation {
    condition     = var.gemini_max_output_tokens >= 1 && floor(var.gemini_max_output_tokens) == var.gemini_max_output_tokens
    error_message = "gemini_max_output_tokens must be a whole number, 1 or more."
  }
}

variable "gemini_timeout_s" {
  description = "GEMINI_TIMEOUT_S: timeout of one Gemini request, in seconds."
  type        = number
  default     = 60

  validation {
    condition     = var.gemini_timeout_s > 0
    error_message = "gemini_timeout_s must be more than 0."
  }
}

variable "model_input_max_side" {
  description = "MODEL_INPUT_MAX_SIDE: the image sent to the model is downscaled to this longest side, in pixels; an upright colour JPEG within it is sent as uploaded."
  type        = number
  default     = 1920

  validation {
    condition     = var.model_input_max_side >= 64 && floor(var.model_input_max_side) == var.model_input_max_side
    error_message = "model_input_max_side must be a whole number, 64 or more."
  }
}

variable "output_turns" {
  description = "OUTPUT_TURNS: events of one worker process that draw and send their outputs (crops, overview) at once; the others wait their turn in arrival order (at most 2 s each). A turn waits at most 30 ms for the uploads' answers; the rows take no turn. 0 = no turns."
  type        = number
  default     = 1

  validation {
    condition     = var.output_turns >= 0 && floor(var.output_turns) == var.output_turns
    error_message = "output_turns must be a whole number, 0 or more."
  }
}

variable "max_image_bytes" {
  description = "MAX_IMAGE_BYTES: larger uploads are refused without being downloaded."
  type        = number
  default     = 41943040

  validation {
    condition     = var.max_image_bytes >= 1 && floor(var.max_image_bytes) == var.max_image_bytes
    error_message = "max_image_bytes must be a whole number, 1 or more."
  }
}

variable "max_image_pixels" {
  description = "MAX_IMAGE_PIXELS: decompression-bomb guard; images with more pixels are refused before decoding."
  type        = number
  default     = 100000000

  validation {
    condition     = var.max_image_pixels >= 1 && floor(var.max_image_pixels) == var.max_image_pixels
    error_message = "max_image_pixels must be a whole number, 1 or more."
  }
}

variable "give_up_after_s" {
  description = "GIVE_UP_AFTER_S: an image whose errors are still transient on a delivery this many seconds after its upload gets a failed row instead of another redelivery. Must be below the time dead_letter_max_delivery_attempts deliveries take, so the failed row comes before the dead letter."
  type        = number
  default     = 43200
  validation {
    condition     = var.give_up_after_s >= 600
    error_message = "give_up_after_s must be at least 600 seconds."
  }
}

variable "retry_deadline_s" {
  description = "RETRY_DEADLINE_S: transient errors are retried until this many seconds after the event arrived, then the event is redelivered. At least 60 s below function_timeout_seconds."
  type        = number
  default     = 300

  validation {
    condition     = var.retry_deadline_s > 0
    error_message = "retry_deadline_s must be more than 0."
  }
}

variable "log_level" {
  description = "LOG_LEVEL: lowest severity written to the log (DEBUG, INFO, WARNING, ERROR)."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], upper(var.log_level))
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "dead_letter_max_delivery_attempts" {
  description = "Deliveries of one event (Pub/Sub counts each non-2xx answer or timeout) before it goes to the dead-letter topic. Pub/Sub allows 5-100; with Eventarc's backoff (10 s doubling to 600 s) 100 attempts take at least about 15.7 hours."
  type        = number
  default     = 100

  validation {
    condition     = var.dead_letter_max_delivery_attempts >= 5 && var.dead_letter_max_delivery_attempts <= 100 && floor(var.dead_letter_max_delivery_attempts) == var.dead_letter_max_delivery_attempts
    error_message = "dead_letter_max_delivery_attempts must be a whole number from 5 to 100 (Pub/Sub's limits)."
  }
}

variable "dead_letter_retention_days" {
  description = "Days the dead-letter topic and subscription keep undelivered events, and the trigger's subscription keeps an event it is still redelivering (instead of Eventarc's 24 hours)."
  type        = number
  default     = 7

  validation {
    condition     = var.dead_letter_retention_days >= 1 && var.dead_letter_retention_days <= 31 && floor(var.dead_letter_retention_days) == var.dead_letter_retention_days
    error_message = "dead_letter_retention_days must be a whole number from 1 to 31 (Pub/Sub's retention limit)."
  }
}

variable "dead_letter_kms_key_name" {
  description = "Cloud KMS key that encrypts the dead-letter topic's messages. Empty: Google-managed keys."
  type        = string
  default     = ""

  validation {
    condition     = var.dead_letter_kms_key_name == "" || can(regex("^projects/[a-z0-9-]+/locations/[a-z0-9-]+/keyRings/[A-Za-z0-9_-]+/cryptoKeys/[A-Za-z0-9_-]+$", var.dead_letter_kms_key_name))
    error_message = "dead_letter_kms_key_name must be empty or a Cloud KMS key: projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY."
  }
}
