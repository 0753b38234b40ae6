"""The function's configuration: one immutable object, read once from environment variables.

Every variable the code reads is declared once in `SETTINGS`; the README's table and the
Terraform tests are checked against this list, so it is the single source of truth.

>>> cfg = Config.from_env({"SOURCE_PREFIX": "cams/", "GEMINI_TEMPERATURE": "0.2"})
>>> cfg.source_prefix, cfg.gemini_temperature, cfg.crops_prefix
('cams/', 0.2, 'processed/')
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

# Cloud Storage bucket names: lower-case letters, digits, "-", "_", ".", 3-222 characters.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")

DEFAULT_PROMPT = "Detect bags and luggage only."

DEFAULT_SYSTEM_INSTRUCTION = (
    "You detect objects on a conveyor belt in a photo from a fixed camera. "
    "Return a JSON array of at most {max_objects} objects. For each object give: "
    '"box_2d" as [ymin, xmin, ymax, xmax] normalized to 0-1000; '
    '"label", a short name of the object; '
    '"color", its dominant colour in one or two words; '
    '"general_description", one short sentence; '
    '"detailed_description", two or three sentences on material, shape, size and distinguishing marks. '
    "If an object appears several times, give each instance its own entry. "
    "Return an empty array if nothing matches. Never return masks or code fencing."
)


class ConfigError(ValueError):
    """An environment variable has a value the function cannot use."""


def _str(value: str) -> str:
    return value


def _prefix(value: str) -> str:
    if value and not value.endswith("/"):
        raise ConfigError(f"prefix {value!r} must end with '/'")
    return value


def _bucket(value: str) -> str:
    value = value.strip()
    if value and not _BUCKET_NAME.fullmatch(value):
        raise ConfigError(f"{value!r} is not a Cloud Storage bucket name (no gs://, no slash)")
    return value


def _int(value: str) -> int:
    return int(value)


def _optional_int(value: str) -> int | None:
    return int(value) if value.strip() else None


def _float(value: str) -> float:
    return float(value)


def _optional_float(value: str) -> float | None:
    return float(value) if value.strip() else None


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{value!r} is not a boolean (use true or false)")


def _cameras(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for name in names:
        if name != "*" and ("/" in name or name in (".", "..")):
            raise ConfigError(f"{name!r} is not a camera folder name (one folder under SOURCE_PREFIX, no slash)")
    return names


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in allowed:
            raise ConfigError(f"{value!r} is not one of {', '.join(allowed)}")
        return lowered

    return parse


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default (as the string a user would set) and meaning."""

    env: str
    field: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False
    # Only meaningful on a developer's machine; Terraform does not set it on the function.
    local_only: bool = False


SETTINGS: tuple[Setting, ...] = (
    # Where things are in the bucket.
    Setting(
        "SOURCE_PREFIX",
        "source_prefix",
        "raw/",
        _prefix,
        "Only objects under this prefix are processed; everything else is ignored.",
    ),
    Setting(
        "CROPS_PREFIX",
        "crops_prefix",
        "processed/",
        _prefix,
        "Where one JPEG crop per object is written: {prefix}{name}-output-{NNNN}.jpg ({name}: the "
        "source's path under SOURCE_PREFIX, extension included).",
    ),
    Setting(
        "OVERVIEW_PREFIX",
        "overview_prefix",
        "processed-overview/",
        _prefix,
        "Where the annotated overview is written: {prefix}processed_{name}.jpg.",
    ),
    Setting(
        "MARKERS_PREFIX",
        "markers_prefix",
        "processed-markers/",
        _prefix,
        "Where completion markers go; a redelivered event whose marker exists is a no-op.",
    ),
    Setting(
        "OUTPUT_BUCKET",
        "output_bucket",
        "",
        _bucket,
        "Bucket for crops, overviews, completion markers and claims, under the prefixes above. "
        "Empty: the bucket of the upload (one bucket; each output fires an event the function "
        "ignores). Set, the upload's bucket is only read, and events from this bucket are ignored. "
        "One source bucket per outputs bucket: names do not include the source bucket.",
    ),
    Setting(
        "BACKGROUNDS_PREFIX",
        "backgrounds_prefix",
        "backgrounds/",
        _prefix,
        "Optional photos of each camera's empty scene, {prefix}{camera}.jpg, camera = first "
        "folder under SOURCE_PREFIX; the offline detector and the gate compare against them.",
    ),
    Setting(
        "SEARCH_PREFIX",
        "search_prefix",
        "search/",
        _prefix,
        "Lost-bag queries: a photo, or a .txt/.json description, uploaded under this prefix is "
        "searched for among the indexed crops (see docs/search.md).",
    ),
    Setting(
        "SEARCH_RESULTS_PREFIX",
        "search_results_prefix",
        "search-results/",
        _prefix,
        "Where a query's results go: {prefix}{name}.json and the contact sheet {prefix}{name}.jpg "
        "({name}: the query's path under SEARCH_PREFIX).",
    ),
    # Detectors.
    Setting(
        "DETECTOR",
        "detector",
        "gemini",
        _choice("gemini", "offline"),
        "gemini, or offline: the weight-free belt detector for every image (no model calls).",
    ),
    Setting(
        "EMPTY_BELT_GATE_CAMERAS",
        "empty_belt_gate_cameras",
        "",
        _cameras,
        "Cameras (folders under SOURCE_PREFIX, comma-separated; * = all) whose frames the "
        "empty-belt gate compares with the camera's empty-scene reference "
        "({BACKGROUNDS_PREFIX}{camera}.jpg) before a Gemini call: a frame that shows only the "
        "empty scene (camera vibration, light and the belt's motion tolerated) is recorded as "
        "empty without a model call. A camera without a reference is always sent to the model. "
        "Empty: the gate is off.",
    ),
    Setting(
        "OFFLINE_FALLBACK",
        "offline_fallback",
        "false",
        _bool,
        "When Gemini is not configured, or keeps failing past RETRY_DEADLINE_S, process the "
        "image with the offline detector (rows say detector=offline and why) instead of "
        "failing or waiting for redelivery. Off: the offline detector is made for plain belts "
        "seen by a fixed camera, and on other real photos its rows are guesses; Eventarc "
        "redelivers and `segmentation.replay` takes over after an outage.",
    ),
    # Lost-bag search.
    Setting(
        "EMBEDDER",
        "embedder",
        "auto",
        _choice("auto", "gemini", "descriptor", "off"),
        "How each crop is indexed for lost-bag search: gemini (multimodal embeddings on the "
        "Gemini backend), descriptor (the weight-free colour, texture and shape descriptor), off "
        "(no indexing; image rows say so), or auto: gemini when a Gemini backend is configured, "
        "else descriptor.",
    ),
    Setting(
        "EMBEDDING_MODEL",
        "embedding_model",
        "gemini-embedding-2",
        _str,
        "Gemini embedding model (multimodal: crops and text queries share one space).",
    ),
    Setting(
        "EMBEDDING_DIMENSIONS",
        "embedding_dimensions",
        "768",
        _int,
        "Length of the Gemini embeddings, 128-3072. Crops indexed with one length are searched only with that length.",
    ),
    Setting(
        "SEARCH_TOP_K",
        "search_top_k",
        "10",
        _int,
        "Matches written per query (results file, contact sheet, search_matches rows).",
    ),
    Setting(
        "SEARCH_RERANK",
        "search_rerank",
        "false",
        _bool,
        "Ask Gemini to compare a photo query with each of the 20 best candidates and reorder "
        "them (one extra model call per query).",
    ),
    # Gemini.
    Setting(
        "GEMINI_BACKEND",
        "gemini_backend",
        "auto",
        _choice("auto", "vertex", "api-key"),
        "vertex (Application Default Credentials, project and location below), api-key "
        "(GEMINI_API_KEY or GOOGLE_API_KEY), or auto: api-key if a key is set, else vertex "
        "if a project is set.",
    ),
    Setting(
        "GOOGLE_CLOUD_PROJECT",
        "project",
        "",
        _str,
        "Project for Vertex AI calls (set by Terraform; also read by the Google clients).",
    ),
    Setting(
        "GOOGLE_CLOUD_LOCATION",
        "location",
        "global",
        _str,
        "Vertex AI location for Gemini calls: global, the eu or us multi-region (data "
        "residency), or a single region such as europe-west4 (gemini-3.5-flash and older "
        "only; 3.6 and later run only in global, eu and us).",
    ),
    Setting(
        "GEMINI_API_KEY",
        "gemini_api_key",
        "",
        _str,
        "API key for local development (api-key backend). Never logged. GOOGLE_API_KEY also works.",
        secret=True,
        local_only=True,
    ),
    Setting(
        "GEMINI_MODEL",
        "gemini_model",
        "gemini-3.5-flash",
        _str,
        "Model id. The default is the GA Flash model that runs in every location kind and "
        "stays until at least May 2027 (2.5 models were retired on 2026-10-20); what each model "
        "takes is in segmentation/models.py.",
    ),
    Setting("GEMINI_PROMPT", "gemini_prompt", DEFAULT_PROMPT, _str, "What to detect, sent with each image."),
    Setting(
        "GEMINI_SYSTEM_INSTRUCTION",
        "gemini_system_instruction",
        DEFAULT_SYSTEM_INSTRUCTION,
        _str,
        "System instruction; {max_objects} is replaced by GEMINI_MAX_OBJECTS.",
    ),
    Setting(
        "GEMINI_TEMPERATURE",
        "gemini_temperature",
        "",
        _optional_float,
        "Sampling temperature. Empty sends none, as Google advises for 3.x models "
        "(below 1.0 they may loop); 2.x spatial examples used 0.5. Never sent to models "
        "that ignore it (3.6 and later).",
    ),
    Setting(
        "GEMINI_THINKING_LEVEL",
        "gemini_thinking_level",
        "minimal",
        _choice("", "minimal", "low", "medium", "high"),
        "Thinking level, sent to models that take one (3.x and later). Google advises no "
        "thinking for detection; a model that rejects the level gets the nearest it takes "
        "(minimal is sent as low to 3.7 and 3.8). Empty sends none.",
    ),
    Setting(
        "GEMINI_THINKING_BUDGET",
        "gemini_thinking_budget",
        "0",
        _optional_int,
        "Thinking budget in tokens, sent to 2.x-family models only (0 = off, Google's advice "
        "for object detection). Empty sends none.",
    ),
    Setting(
        "GEMINI_MEDIA_RESOLUTION",
        "gemini_media_resolution",
        "high",
        _choice("", "low", "medium", "high"),
        "Media resolution of the image (3.x: low 280, medium 560, high 1120 tokens). Empty sends none.",
    ),
    Setting(
        "GEMINI_MAX_OBJECTS",
        "gemini_max_objects",
        "25",
        _int,
        "Most objects asked for per image; extra objects in an answer are dropped.",
    ),
    Setting(
        "GEMINI_MAX_OUTPUT_TOKENS",
        "gemini_max_output_tokens",
        "8192",
        _int,
        "Output-token limit per call; an answer cut at the limit keeps its complete objects "
        "and the image is marked partial.",
    ),
    Setting("GEMINI_TIMEOUT_S", "gemini_timeout_s", "60", _float, "Timeout of one Gemini HTTP request, in seconds."),
    Setting(
        "MODEL_INPUT_MAX_SIDE",
        "model_input_max_side",
        "1920",
        _int,
        "The image sent to the model is downscaled to this longest side (boxes still map to "
        "the original); an upright colour JPEG within it is sent as uploaded.",
    ),
    # Limits and retries.
    Setting(
        "OUTPUT_TURNS",
        "output_turns",
        "1",
        _int,
        "Events of one worker process that draw and send their outputs (crops, overview) at "
        "once; the others wait their turn in arrival order (at most 2 s each, then go ahead). "
        "A turn waits at most 30 ms for the uploads' answers; the rows take no turn. "
        "0 = no turns.",
    ),
    Setting(
        "MAX_IMAGE_BYTES",
        "max_image_bytes",
        str(40 * 1024 * 1024),
        _int,
        "Larger objects are refused without being downloaded.",
    ),
    Setting(
        "MAX_IMAGE_PIXELS",
        "max_image_pixels",
        str(100_000_000),
        _int,
        "Decompression-bomb guard: images with more pixels are refused before decoding.",
    ),
    Setting(
        "MEMORY_LIMIT_MIB",
        "memory_limit_mib",
        "2048",
        _int,
        "Memory one worker process may use, in MiB (Terraform: the function's memory divided "
        "by its worker processes). 0: no decode memory budget.",
    ),
    Setting(
        "DECODE_MEMORY_FRACTION",
        "decode_memory_fraction",
        "0.6",
        _float,
        "Share of MEMORY_LIMIT_MIB that the images of a worker's concurrent events may hold "
        "together (decoded pixels and drawing copies, estimated from the header); the rest is "
        "kept for the process itself and each event's downloads and outputs. An event waits "
        "until its image fits; a JPEG too large alone is decoded at 1/2, 1/4 or 1/8 size, any "
        "other image too large alone fails as image_too_large_for_memory.",
    ),
    Setting(
        "RETRY_DEADLINE_S",
        "retry_deadline_s",
        "300",
        _float,
        "Transient errors are retried with backoff until this many seconds after the event "
        "arrived; then the function raises so the platform redelivers. Keep it below the "
        "function timeout.",
    ),
    Setting(
        "GIVE_UP_AFTER_S",
        "give_up_after_s",
        "43200",
        _float,
        "An image whose errors are still transient (quota, 5xx, timeouts) on a delivery this "
        "many seconds after its upload gets a failed row instead of another redelivery. Keep "
        "it below the time the trigger's subscription takes to dead-letter an event (Terraform "
        "checks). Malformed model answers and unexpected errors give up sooner: on the first "
        "redelivery that fails again.",
    ),
    Setting(
        "CLAIM_LEASE_S",
        "claim_lease_s",
        "540",
        _float,
        "Seconds a delivery owns an image's work before another copy of the event may take it "
        "over (a killed worker). Set it to the function timeout (Terraform does).",
    ),
    # Results.
    Setting(
        "BQ_OBJECTS_TABLE",
        "bq_objects_table",
        "",
        _str,
        "BigQuery table for object rows, project.dataset.table. Empty: rows go to SQLITE_PATH.",
    ),
    Setting(
        "BQ_IMAGES_TABLE",
        "bq_images_table",
        "",
        _str,
        "BigQuery table for image rows, project.dataset.table. Empty: rows go to SQLITE_PATH.",
    ),
    Setting(
        "BQ_EMBEDDINGS_TABLE",
        "bq_embeddings_table",
        "",
        _str,
        "BigQuery table for crop embeddings, project.dataset.table. Empty: `embeddings` beside BQ_OBJECTS_TABLE.",
    ),
    Setting(
        "BQ_SEARCH_MATCHES_TABLE",
        "bq_search_matches_table",
        "",
        _str,
        "BigQuery table for lost-bag search matches, project.dataset.table. Empty: "
        "`search_matches` beside BQ_OBJECTS_TABLE.",
    ),
    Setting(
        "SQLITE_PATH",
        "sqlite_path",
        "local-data/results.sqlite",
        _str,
        "Local row sink used when no BigQuery tables are configured.",
        local_only=True,
    ),
    Setting(
        "LOG_LEVEL",
        "log_level",
        "INFO",
        _choice("debug", "info", "warning", "error"),
        "Lowest severity written to the log.",
    ),
)


@dataclass(frozen=True)
class Config:
    """Runtime configuration. Build it with `Config.from_env()`; see `SETTINGS` for meanings."""

    source_prefix: str
    crops_prefix: str
    overview_prefix: str
    markers_prefix: str
    output_bucket: str
    backgrounds_prefix: str
    search_prefix: str
    search_results_prefix: str
    detector: str
    empty_belt_gate_cameras: tuple[str, ...]
    offline_fallback: bool
    embedder: str
    embedding_model: str
    embedding_dimensions: int
    search_top_k: int
    search_rerank: bool
    gemini_backend: str
    project: str
    location: str
    gemini_api_key: str
    gemini_model: str
    gemini_prompt: str
    gemini_system_instruction: str
    gemini_temperature: float | None
    gemini_thinking_level: str
    gemini_thinking_budget: int | None
    gemini_media_resolution: str
    gemini_max_objects: int
    gemini_max_output_tokens: int
    gemini_timeout_s: float
    model_input_max_side: int
    output_turns: int
    max_image_bytes: int
    max_image_pixels: int
    memory_limit_mib: int
    decode_memory_fraction: float
    retry_deadline_s: float
    give_up_after_s: float
    claim_lease_s: float
    bq_objects_table: str
    bq_images_table: str
    bq_embeddings_table: str
    bq_search_matches_table: str
    sqlite_path: str
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read every setting from `environ` (default `os.environ`), applying defaults.

        Raises `ConfigError` naming the variable when a value is unusable.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = environ.get(setting.env, setting.default)
            if setting.env == "GEMINI_API_KEY" and not raw:
                raw = environ.get("GOOGLE_API_KEY", "")
            try:
                values[setting.field] = setting.parse(raw)
            except (ValueError, ConfigError) as exc:
                shown = "(hidden)" if setting.secret else repr(raw)
                raise ConfigError(f"{setting.env}={shown}: {exc}") from None
        config = cls(**values)
        config._validate()
        return config

    def _validate(self) -> None:
        outputs = (
            self.crops_prefix,
            self.overview_prefix,
            self.markers_prefix,
            self.backgrounds_prefix,
            self.search_results_prefix,
        )
        for inputs in (self.source_prefix, self.search_prefix):
            for prefix in outputs:
                if _overlaps(prefix, inputs):
                    raise ConfigError(
                        f"prefix {prefix!r} overlaps input prefix {inputs!r}: "
                        "the function would trigger itself on its own files"
                    )
        if _overlaps(self.source_prefix, self.search_prefix):
            raise ConfigError(f"SEARCH_PREFIX {self.search_prefix!r} overlaps SOURCE_PREFIX {self.source_prefix!r}")
        if not 128 <= self.embedding_dimensions <= 3072:
            raise ConfigError("EMBEDDING_DIMENSIONS must be between 128 and 3072")
        if not 1 <= self.search_top_k <= 100:
            raise ConfigError("SEARCH_TOP_K must be between 1 and 100")
        if bool(self.bq_objects_table) != bool(self.bq_images_table):
            raise ConfigError("set both BQ_OBJECTS_TABLE and BQ_IMAGES_TABLE, or neither")
        if self.gemini_max_objects < 1 or self.model_input_max_side < 64:
            raise ConfigError("GEMINI_MAX_OBJECTS must be >= 1 and MODEL_INPUT_MAX_SIDE >= 64")
        if self.output_turns < 0:
            raise ConfigError("OUTPUT_TURNS must be >= 0")
        if self.memory_limit_mib < 0 or not 0 <= self.decode_memory_fraction <= 1:
            raise ConfigError("MEMORY_LIMIT_MIB must be >= 0 and DECODE_MEMORY_FRACTION between 0 and 1")

    def gate_checks(self, camera: str | None) -> bool:
        """Whether the empty-belt gate is switched on for `camera` (a folder under SOURCE_PREFIX)."""
        cameras = self.empty_belt_gate_cameras
        return camera is not None and ("*" in cameras or camera in cameras)

    def outputs_bucket_for(self, source_bucket: str) -> str:
        """The bucket an upload in `source_bucket` gets its outputs, marker and claim in."""
        return self.output_bucket or source_bucket

    @property
    def uses_bigquery(self) -> bool:
        return bool(self.bq_objects_table)

    def bq_table(self, table: str) -> str:
        """The BigQuery table id ("project.dataset.table") of `table`, one of `schema.TABLES`."""
        explicit = {
            "objects": self.bq_objects_table,
            "images": self.bq_images_table,
            "embeddings": self.bq_embeddings_table,
            "search_matches": self.bq_search_matches_table,
        }[table]
        if explicit or not self.bq_objects_table:
            return explicit
        return f"{self.bq_objects_table.rsplit('.', 1)[0]}.{table}"

    @property
    def resolved_embedder(self) -> str:
        """The embedder to index crops with: "gemini", "descriptor", or "off"."""
        if self.embedder != "auto":
            return self.embedder
        return "gemini" if self.resolved_backend else "descriptor"

    @property
    def resolved_backend(self) -> str | None:
        """The Gemini backend to use: "api-key", "vertex", or None when nothing is configured."""
        if self.gemini_backend != "auto":
            return self.gemini_backend
        if self.gemini_api_key:
            return "api-key"
        if self.project:
            return "vertex"
        return None

    def __repr__(self) -> str:
        secret_fields = {s.field for s in SETTINGS if s.secret}
        shown = ", ".join(
            f"{f.name}={'***' if f.name in secret_fields and getattr(self, f.name) else repr(getattr(self, f.name))}"
            for f in fields(self)
        )
        return f"Config({shown})"


def _overlaps(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)
