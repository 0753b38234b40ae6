"""Terraform (terraform/), checked offline: there is no terraform binary or provider download here.

- Every .tf file is parsed with python-hcl2 and its wiring checked against the code itself: the
  function's environment against `segmentation.config.SETTINGS`, the tables' schemas against
  `segmentation/schema/`, the variable defaults against the settings' defaults, the trigger
  against the images bucket, and the IAM grants against the minimal, resource-scoped list.
- checkov scans terraform/ (with no var file and with each environment's) and must report no
  failed check; every skip is inline in the .tf file with its reason.
- The function's source archive is built as `data.archive_file.function_source` builds it
  (patterns read from storage.tf) and the function is imported from it in a clean interpreter
  with only the hashed lock requirements.txt installed (`pip install --require-hashes`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions

from segmentation.config import SETTINGS, Config
from segmentation.schema import SCHEMA_DIR, TABLES, load_schema

ROOT = Path(__file__).resolve().parents[1]
TF = ROOT / "terraform"
ENVS = ("dev", "prod")

DEPLOYED_SETTINGS = {setting.env: setting for setting in SETTINGS if not setting.local_only}

_HCL_OPTIONS = SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True, preserve_heredocs=False
)


# --- Reading the configuration ---------------------------------------------------------------------


def _unescape(value: Any) -> Any:
    """An HCL string literal's value: python-hcl2 resolves backslash escapes but keeps the
    template escapes $${ and %%{ as written."""
    if not isinstance(value, str):
        return value
    return value.replace("$${", "${").replace("%%{", "%{")


def _load(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return hcl2.load(handle, serialization_options=_HCL_OPTIONS)


@functools.cache
def config() -> dict[str, dict[str, Any]]:
    """Every block of terraform/*.tf, merged: resource/data as {type: {name: body}}, variable,
    output and locals as {name: value}, terraform as a list of blocks, plus each block's file."""
    merged: dict[str, Any] = {
        "resource": {},
        "data": {},
        "variable": {},
        "output": {},
        "locals": {},
        "terraform": [],
        "provider": [],
        "file_of": {},
    }
    for path in sorted(TF.glob("*.tf")):
        parsed = _load(path)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        assert name not in merged[kind].setdefault(rtype, {}), f"{rtype}.{name} declared twice"
                        merged[kind][rtype][name] = body
                        merged["file_of"][f"{kind}.{rtype}.{name}"] = path.name
        for kind in ("variable", "output"):
            for block in parsed.get(kind, []):
                for name, body in block.items():
                    assert name not in merged[kind], f"{kind} {name} declared twice"
                    merged[kind][name] = body
        for block in parsed.get("locals", []):
            for name, value in block.items():
                assert name not in merged["locals"], f"local {name} declared twice"
                merged["locals"][name] = value
        merged["terraform"].extend(parsed.get("terraform", []))
        merged["provider"].extend(parsed.get("provider", []))
    return merged


def resource(rtype: str, name: str) -> dict[str, Any]:
    return config()["resource"][rtype][name]


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """A nested block that occurs once (python-hcl2 gives blocks as lists)."""
    value = body[name]
    if isinstance(value, list):
        assert len(value) == 1, f"expected one {name} block, found {len(value)}"
        value = value[0]
    return value


def ref(expression: str) -> str:
    """The expression inside a lone ${...}, e.g. "${var.x}" -> "var.x"."""
    match = re.fullmatch(r"\$\{(.*)\}", expression, re.S)
    assert match, f"{expression!r} is not a single interpolation"
    return match.group(1).strip()


def default_of(variable: str) -> Any:
    return _unescape(config()["variable"][variable].get("default"))


def tfvars(env: str) -> dict[str, Any]:
    return {key: _unescape(value) for key, value in _load(TF / "envs" / f"{env}.tfvars").items()}


# --- Files and versions ---------------------------------------------------------------------------


def test_every_terraform_file_parses_and_layout_is_complete():
    names = {path.name for path in TF.glob("*.tf")}
    assert {"versions.tf", "variables.tf", "outputs.tf", "main.tf"} <= names
    for path in TF.rglob("*"):
        if path.suffix in (".tf", ".tfvars", ".hcl") and ".terraform" not in path.parts:
            assert isinstance(_load(path), dict), path
    for env in ENVS:
        assert (TF / "envs" / f"{env}.tfvars").is_file()
        assert (TF / "envs" / f"{env}.backend.hcl").is_file()


def test_providers_are_pinned_and_state_is_remote():
    (terraform,) = config()["terraform"]
    assert re.fullmatch(r">= ?1\.\d+\.\d+, ?< ?2\.0\.0", terraform["required_version"])
    providers = block(terraform, "required_providers")
    for name in ("google", "archive"):
        spec = providers[name]
        assert spec["source"] == f"hashicorp/{name}"
        # ~> X.Y allows only compatible releases of one major version.
        assert re.fullmatch(r"~> ?\d+\.\d+(\.\d+)?", spec["version"]), spec
    assert not any(key.startswith("google-beta") for key in providers)
    backend = terraform["backend"]
    assert backend == [{"gcs": {}}] or backend == {"gcs": {}}, "partial gcs backend, configured per environment"


def test_each_environment_has_its_own_state_prefix_and_valid_tfvars():
    prefixes = set()
    for env in ENVS:
        backend = _load(TF / "envs" / f"{env}.backend.hcl")
        assert set(backend) == {"bucket", "prefix"}
        assert env in backend["prefix"]
        prefixes.add((backend["bucket"], backend["prefix"]))

        values = tfvars(env)
        unknown = set(values) - set(config()["variable"])
        assert not unknown, f"{env}.tfvars sets undeclared variables {unknown}"
        assert values["environment"] == env
        required = {name for name, body in config()["variable"].items() if "default" not in body}
        assert required <= set(values), f"{env}.tfvars misses {required - set(values)}"
    assert len(prefixes) == len(ENVS)

    # Data protection: prod keeps its data on destroy, dev can be thrown away.
    prod, dev = tfvars("prod"), tfvars("dev")
    assert prod["deletion_protection"] is True and prod["bucket_force_destroy"] is False
    assert dev["deletion_protection"] is False


# --- APIs and storage -------------------------------------------------------------------------------


def test_the_apis_the_system_needs_are_enabled_and_stay_enabled_on_destroy():
    services = resource("google_project_service", "enabled")
    assert ref(services["for_each"]) == "local.required_apis"
    apis = re.findall(r'"([a-z]+\.googleapis\.com)"', config()["locals"]["required_apis"])
    assert {
        "cloudfunctions.googleapis.com",
        "run.googleapis.com",
        "eventarc.googleapis.com",
        "pubsub.googleapis.com",
        "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com",
        "storage.googleapis.com",
        "bigquery.googleapis.com",
        "aiplatform.googleapis.com",
        "logging.googleapis.com",
    } <= set(apis)
    assert services["disable_on_destroy"] is False


def test_images_bucket_is_private_uniform_and_optionally_versioned_and_expiring():
    bucket = resource("google_storage_bucket", "images")
    assert ref(bucket["count"]) == "var.create_bucket ? 1 : 0"
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert ref(bucket["force_destroy"]) == "var.bucket_force_destroy"
    assert ref(block(bucket, "versioning")["enabled"]) == "var.bucket_versioning"
    rules = [rule["lifecycle_rule"] for rule in bucket["dynamic"] if "lifecycle_rule" in rule]
    raw_rule = rules[0]
    assert "var.raw_retention_days > 0" in raw_rule["for_each"] and "var.source_prefix" in raw_rule["for_each"]
    condition = block(block(raw_rule, "content"), "condition")
    assert ref(condition["age"]) == "var.raw_retention_days"
    # Claims outlive the longest redelivery (the subscription's retention) by a day, then go.
    (claims,) = bucket["lifecycle_rule"]
    condition = block(claims, "condition")
    assert condition["matches_suffix"] == [".claim"] and ref(condition["matches_prefix"][0]) == "var.markers_prefix"
    assert ref(condition["age"]) == "var.dead_letter_retention_days + 1" and block(claims, "action")["type"] == "Delete"
    # An existing bucket can be used instead, and must allow IAM conditions.
    existing = config()["data"]["google_storage_bucket"]["existing_images"]
    assert ref(existing["count"]) == "var.create_bucket ? 0 : 1"
    assert "uniform_bucket_level_access" in json.dumps(existing["lifecycle"])


def test_source_bucket_is_separate_private_and_the_archive_is_named_by_content():
    source = resource("google_storage_bucket", "function_source")
    assert source["uniform_bucket_level_access"] is True
    assert source["public_access_prevention"] == "enforced"
    assert source["name"] != resource("google_storage_bucket", "images")["name"]
    obj = resource("google_storage_bucket_object", "function_source")
    assert ref(obj["bucket"]) == "google_storage_bucket.function_source.name"
    assert "data.archive_file.function_source.output_md5" in obj["name"]
    assert ref(obj["source"]) == "data.archive_file.function_source.output_path"


# --- BigQuery ---------------------------------------------------------------------------------------


def test_tables_take_their_schema_from_the_codes_schema_files():
    schema_dir = config()["locals"]["schema_dir"]
    assert schema_dir == "${path.module}/../segmentation/schema"
    assert (TF / ".." / "segmentation" / "schema").resolve() == SCHEMA_DIR.resolve()
    assert set(config()["resource"]["google_bigquery_table"]) == set(TABLES)
    for table in TABLES:
        body = resource("google_bigquery_table", table)
        assert body["table_id"] == table
        assert ref(body["schema"]) == f'file("${{local.schema_dir}}/{table}.json")'
        assert (SCHEMA_DIR / f"{table}.json").is_file()
        assert ref(body["dataset_id"]) == "google_bigquery_dataset.results.dataset_id"
        assert ref(body["deletion_protection"]) == "var.deletion_protection"


@pytest.mark.parametrize("table, clustering", [("objects", ["label", "item_color"]), ("images", ["status"])])
def test_tables_are_partitioned_by_processing_day_and_clustered_on_filter_columns(table, clustering):
    body = resource("google_bigquery_table", table)
    partitioning = block(body, "time_partitioning")
    assert partitioning["type"] == "DAY" and partitioning["field"] == "processed_at"
    assert ref(partitioning["expiration_ms"]) == "local.partition_expiration"
    assert "var.partition_expiration_days" in config()["locals"]["partition_expiration"]
    assert body["clustering"] == clustering
    columns = {column["name"]: column for column in load_schema(table)}
    assert columns["processed_at"]["type"] == "TIMESTAMP"
    assert set(clustering) <= set(columns)


# --- The function -----------------------------------------------------------------------------------


def function() -> dict[str, Any]:
    return resource("google_cloudfunctions2_function", "segmentation")


def environment() -> dict[str, str]:
    return config()["locals"]["function_environment"]


def test_trigger_is_object_finalize_on_the_images_bucket_with_retries():
    trigger = block(function(), "event_trigger")
    assert trigger["event_type"] == "google.cloud.storage.object.v1.finalized"
    assert trigger["retry_policy"] == "RETRY_POLICY_RETRY"
    (event_filter,) = (
        trigger["event_filters"] if isinstance(trigger["event_filters"], list) else [trigger["event_filters"]]
    )
    assert event_filter["attribute"] == "bucket"
    assert ref(event_filter["value"]) == "local.images_bucket_name"
    assert ref(trigger["trigger_region"]) == "local.trigger_region"
    assert ref(config()["locals"]["trigger_region"]) == "lower(local.images_bucket_location)"
    images = ref(config()["locals"]["images_bucket_name"])
    assert "google_storage_bucket.images[0].name" in images
    assert "data.google_storage_bucket.existing_images[0].name" in images
    assert ref(trigger["service_account_email"]) == "google_service_account.trigger.email"


def test_function_builds_main_on_object_finalized_from_the_archive_and_runs_as_the_runtime_account():
    import main

    build = block(function(), "build_config")
    assert build["runtime"] == "python311"
    assert callable(getattr(main, build["entry_point"]))
    storage_source = block(block(build, "source"), "storage_source")
    assert ref(storage_source["bucket"]) == "google_storage_bucket.function_source.name"
    assert ref(storage_source["object"]) == "google_storage_bucket_object.function_source.name"
    assert ref(build["service_account"]) == "google_service_account.build.id"

    service = block(function(), "service_config")
    assert ref(service["service_account_email"]) == "google_service_account.runtime.email"
    assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY"
    assert service["all_traffic_on_latest_revision"] is True
    assert ref(service["environment_variables"]) == "merge(local.function_environment, local.server_environment)"
    for key, variable in {
        "available_memory": "function_memory",
        "available_cpu": "function_cpu",
        "timeout_seconds": "function_timeout_seconds",
        "max_instance_count": "function_max_instances",
        "max_instance_request_concurrency": "function_concurrency",
    }.items():
        assert ref(service[key]) == f"var.{variable}"
        assert "default" in config()["variable"][variable], f"{variable} needs a sensible default"
    assert default_of("function_timeout_seconds") <= 540
    assert default_of("function_concurrency") > 1 and float(default_of("function_cpu")) >= 1


def test_web_server_runs_a_worker_per_vcpu_with_a_thread_per_concurrent_event():
    server = config()["locals"]["server_environment"]
    assert set(server) == {"WORKERS", "THREADS"}
    assert not set(server) & set(environment())
    assert ref(server["WORKERS"]) == "tostring(max(1, floor(local.cpu)))"
    assert ref(server["THREADS"]) == "tostring(var.function_concurrency)"
    assert ref(config()["locals"]["cpu"]) == "tonumber(var.function_cpu)"


def test_environment_is_exactly_what_the_code_reads_minus_local_only_settings():
    assert set(environment()) == set(DEPLOYED_SETTINGS)
    local_only = {setting.env for setting in SETTINGS if setting.local_only}
    assert local_only == {"GEMINI_API_KEY", "SQLITE_PATH"}
    assert not local_only & set(environment())


def test_environment_values_come_from_variables_and_the_created_tables():
    env = environment()
    assert env["GEMINI_BACKEND"] == "vertex"
    assert ref(env["GOOGLE_CLOUD_PROJECT"]) == "var.project_id"
    assert ref(env["GOOGLE_CLOUD_LOCATION"]) == "var.vertex_location"
    for key in (
        "SOURCE_PREFIX",
        "CROPS_PREFIX",
        "OVERVIEW_PREFIX",
        "MARKERS_PREFIX",
        "BACKGROUNDS_PREFIX",
        "SEARCH_PREFIX",
        "SEARCH_RESULTS_PREFIX",
    ):
        assert ref(env[key]) == f"var.{key.lower()}"
    for table in TABLES:
        assert ref(env[f"BQ_{table.upper()}_TABLE"]) == f"local.{table}_table_id"
    for table in TABLES:
        table_id = config()["locals"][f"{table}_table_id"]
        for part in ("project", "dataset_id", "table_id"):
            assert f"${{google_bigquery_table.{table}.{part}}}" in table_id
        assert table_id.count(".") >= 2


def _variable_for(env_name: str) -> str | None:
    """The one variable an environment entry is computed from, if it is computed from one."""
    names = set(re.findall(r"\bvar\.([a-z0-9_]+)", environment()[env_name]))
    return names.pop() if len(names) == 1 else None


def _same_value(terraform_default: Any, code_default: str) -> bool:
    if terraform_default is None:
        return code_default == ""
    if isinstance(terraform_default, bool):
        return code_default.lower() == str(terraform_default).lower()
    if isinstance(terraform_default, (int, float)):
        return code_default != "" and float(code_default) == float(terraform_default)
    if isinstance(terraform_default, list):  # deployed joined with commas (join(",", var.x))
        return ",".join(map(str, terraform_default)) == code_default
    return str(terraform_default) == code_default


def test_variable_defaults_equal_the_codes_defaults():
    checked = 0
    for env_name, setting in DEPLOYED_SETTINGS.items():
        variable = _variable_for(env_name)
        if variable is None or "default" not in config()["variable"][variable]:
            continue  # GEMINI_BACKEND (vertex on purpose), GOOGLE_CLOUD_PROJECT, the 4 table ids, OUTPUT_BUCKET
        checked += 1
        assert _same_value(default_of(variable), setting.default), (
            f"var.{variable} defaults to {default_of(variable)!r}; "
            f"{env_name} defaults to {setting.default!r} in the code"
        )
    assert checked == len(DEPLOYED_SETTINGS) - 8  # and MEMORY_LIMIT_MIB, from memory and cpu


def _deployed_env(overrides: dict[str, Any]) -> dict[str, str]:
    """The environment Terraform would set, for literal variable values (defaults + overrides)."""
    values: dict[str, str] = {}
    for env_name in DEPLOYED_SETTINGS:
        variable = _variable_for(env_name)
        if variable is None:
            continue
        value = overrides.get(variable, default_of(variable))
        if value is None:
            values[env_name] = ""
        elif isinstance(value, float) and value.is_integer():
            values[env_name] = str(int(value))
        else:
            values[env_name] = str(value)
    values.update(
        GEMINI_BACKEND=environment()["GEMINI_BACKEND"],
        GOOGLE_CLOUD_PROJECT=overrides.get("project_id", "my-project"),
        BQ_OBJECTS_TABLE="p.conveyor.objects",
        BQ_IMAGES_TABLE="p.conveyor.images",
        BQ_EMBEDDINGS_TABLE="p.conveyor.embeddings",
        BQ_SEARCH_MATCHES_TABLE="p.conveyor.search_matches",
        MEMORY_LIMIT_MIB=str(worker_memory_mib(overrides)),
        OUTPUT_BUCKET="p-conveyor-outputs"
        if overrides.get("separate_outputs_bucket", default_of("separate_outputs_bucket"))
        else "",
    )
    return values


def worker_memory_mib(overrides: dict[str, Any]) -> int:
    """local.worker_memory_mib: the function's memory in MiB over its worker processes."""
    memory = overrides.get("function_memory", default_of("function_memory"))
    cpu = float(overrides.get("function_cpu", default_of("function_cpu")))
    return int(config()["locals"]["memory_mib"][memory]) // max(1, int(cpu))


@pytest.mark.parametrize("env", (None, *ENVS))
def test_the_code_accepts_the_deployed_configuration(env):
    deployed = _deployed_env(tfvars(env) if env else {})
    assert set(deployed) == set(DEPLOYED_SETTINGS)
    cfg = Config.from_env(deployed)
    assert cfg.resolved_backend == "vertex" and cfg.uses_bigquery


# --- Variables --------------------------------------------------------------------------------------


def test_every_variable_is_typed_and_described():
    for name, body in config()["variable"].items():
        assert body.get("type"), f"variable {name} has no type"
        assert len(body.get("description", "")) > 15, f"variable {name} has no description"
    for name in (
        "project_id",
        "region",
        "source_prefix",
        "crops_prefix",
        "overview_prefix",
        "markers_prefix",
        "function_memory",
        "function_timeout_seconds",
        "environment",
    ):
        assert config()["variable"][name].get("validation"), f"variable {name} is not validated"
    for name, body in config()["output"].items():
        assert body.get("description"), f"output {name} has no description"


def _regex_of(variable: str) -> re.Pattern[str]:
    condition = block(config()["variable"][variable], "validation")["condition"]
    match = re.search(r'regex\("((?:[^"\\]|\\.)*)"', condition)
    assert match, condition
    return re.compile(match.group(1).encode().decode("unicode_escape"))


@pytest.mark.parametrize(
    "value, ok",
    [
        ("europe-west1", True),
        ("us-central1", True),
        ("northamerica-northeast2", True),
        ("me-central2", True),
        ("europe-west1-b", False),
        ("EU", False),
        ("us", False),
        ("Europe-West1", False),
        ("", False),
    ],
)
def test_region_validation(value, ok):
    assert bool(_regex_of("region").fullmatch(value)) is ok


@pytest.mark.parametrize("variable", ["source_prefix", "crops_prefix", "overview_prefix", "markers_prefix"])
@pytest.mark.parametrize(
    "value, ok",
    [
        ("raw/", True),
        ("cams/site-1/", True),
        ("processed-overview/", True),
        ("raw", False),
        ("/raw/", False),
        ("", False),
        ("raw//", False),
        ('raw")/', False),
        ("a b/", False),
    ],
)
def test_prefix_validation(variable, value, ok):
    assert bool(_regex_of(variable).fullmatch(value)) is ok


def test_memory_is_validated_and_the_retry_deadline_fits_in_the_timeout():
    memory = block(config()["variable"]["function_memory"], "validation")["condition"]
    allowed = set(re.findall(r'"(\d+(?:Mi|Gi))"', memory))
    assert {"256Mi", "1Gi", "4Gi", "32Gi"} <= allowed and default_of("function_memory") in allowed
    assert allowed == set(config()["locals"]["memory_mib"])
    preconditions = json.dumps(block(function(), "lifecycle")["precondition"])
    assert "var.retry_deadline_s + 60 <= var.function_timeout_seconds" in preconditions
    assert default_of("retry_deadline_s") + 60 <= default_of("function_timeout_seconds")
    for env in ENVS:
        values = tfvars(env)
        assert values.get("retry_deadline_s", default_of("retry_deadline_s")) + 60 <= values.get(
            "function_timeout_seconds", default_of("function_timeout_seconds")
        )
        assert values.get("function_memory", default_of("function_memory")) in allowed
    assert "startswith(prefix, var.source_prefix)" in preconditions  # outputs never retrigger the function


# --- IAM ----------------------------------------------------------------------------------------------

RUNTIME = "local.runtime_member"
EXPECTED_GRANTS = {
    # (resource type, role, member, scope)
    ("google_storage_bucket_iam_member", "roles/storage.objectViewer", RUNTIME, "local.images_bucket_name"),
    ("google_storage_bucket_iam_member", "roles/storage.objectUser", RUNTIME, "local.images_bucket_name"),
    ("google_storage_bucket_iam_member", "roles/storage.objectUser", RUNTIME, "google_storage_bucket.outputs[0].name"),
    (
        "google_bigquery_table_iam_member",
        "${google_project_iam_custom_role.row_inserter.name}",
        RUNTIME,
        "google_bigquery_table.objects.table_id",
    ),
    (
        "google_bigquery_table_iam_member",
        "${google_project_iam_custom_role.row_inserter.name}",
        RUNTIME,
        "google_bigquery_table.images.table_id",
    ),
    (
        "google_bigquery_table_iam_member",
        "${google_project_iam_custom_role.row_inserter.name}",
        RUNTIME,
        "google_bigquery_table.embeddings.table_id",
    ),
    (
        "google_bigquery_table_iam_member",
        "${google_project_iam_custom_role.row_inserter.name}",
        RUNTIME,
        "google_bigquery_table.search_matches.table_id",
    ),
    # Lost-bag search: VECTOR_SEARCH reads the embeddings table in a query job of the project.
    (
        "google_bigquery_table_iam_member",
        "${google_project_iam_custom_role.row_reader.name}",
        RUNTIME,
        "google_bigquery_table.embeddings.table_id",
    ),
    ("google_project_iam_member", "${google_project_iam_custom_role.query_runner.name}", RUNTIME, "var.project_id"),
    # var.search_uploaders: add queries under search/, read results under search-results/.
    ("google_storage_bucket_iam_member", "roles/storage.objectCreator", "each.value", "local.images_bucket_name"),
    ("google_storage_bucket_iam_member", "roles/storage.objectViewer", "each.value", "local.outputs_bucket_name"),
    ("google_project_iam_member", "${google_project_iam_custom_role.gemini_caller.name}", RUNTIME, "var.project_id"),
    (
        "google_project_iam_member",
        "roles/eventarc.eventReceiver",
        "serviceAccount:${google_service_account.trigger.email}",
        "var.project_id",
    ),
    (
        "google_cloud_run_v2_service_iam_member",
        "roles/run.invoker",
        "serviceAccount:${google_service_account.trigger.email}",
        "google_cloudfunctions2_function.segmentation.service_config[0].service",
    ),
    (
        "google_project_iam_member",
        "roles/run.builder",
        "serviceAccount:${google_service_account.build.email}",
        "var.project_id",
    ),
    (
        "google_project_iam_member",
        "roles/pubsub.publisher",
        "serviceAccount:${data.google_storage_project_service_account.gcs_agent.email_address}",
        "var.project_id",
    ),
    (
        "google_pubsub_topic_iam_member",
        "roles/pubsub.publisher",
        "local.pubsub_agent_member",
        "google_pubsub_topic.dead_letter.name",
    ),
    # Only with customer-managed keys: each service agent on its key (local.kms_grants).
    (
        "google_kms_crypto_key_iam_member",
        "roles/cloudkms.cryptoKeyEncrypterDecrypter",
        "each.value.member",
        "each.value.key",
    ),
}
_SCOPE_KEY = {
    "google_storage_bucket_iam_member": "bucket",
    "google_bigquery_table_iam_member": "table_id",
    "google_project_iam_member": "project",
    "google_cloud_run_v2_service_iam_member": "name",
    "google_pubsub_topic_iam_member": "topic",
    "google_kms_crypto_key_iam_member": "crypto_key_id",
}


def _grants() -> set[tuple[str, str, str, str]]:
    grants = set()
    for rtype, named in config()["resource"].items():
        if not re.search(r"_iam_(member|binding|policy)$", rtype):
            continue
        assert rtype.endswith("_iam_member"), f"{rtype} is authoritative: it would remove grants made elsewhere"
        for body in named.values():
            member = body["member"]
            member = ref(member) if re.fullmatch(r"\$\{[^}]*\}", member) else member
            grants.add((rtype, body["role"], member, ref(body[_SCOPE_KEY[rtype]])))
    return grants


def test_iam_grants_are_exactly_the_minimal_resource_scoped_set():
    assert _grants() == EXPECTED_GRANTS
    assert config()["locals"]["runtime_member"] == "serviceAccount:${google_service_account.runtime.email}"


def test_no_basic_roles_and_nothing_public():
    text = json.dumps(config())  # every value of every block, comments left out
    assert not re.search(r"roles/(owner|editor|viewer)\b", text)
    assert "allUsers" not in text and "allAuthenticatedUsers" not in text


def test_storage_grants_are_conditioned_on_prefixes_and_listing_only_under_crops():
    local = config()["locals"]
    assert local["object_name_root"] == "projects/_/buckets/${local.images_bucket_name}/objects/"
    raw = resource("google_storage_bucket_iam_member", "runtime_reads_uploads")
    assert block(raw, "condition")["expression"] == "${local.raw_read_condition}"
    raw_condition = local["raw_read_condition"]
    assert "for prefix in [var.source_prefix, var.backgrounds_prefix, var.search_prefix]" in raw_condition
    assert 'resource.name.startsWith(\\"${local.object_name_root}${prefix}\\")' in raw_condition

    outputs = resource("google_storage_bucket_iam_member", "runtime_writes_outputs")
    assert block(outputs, "condition")["expression"] == "${local.outputs_write_condition}"
    assert local["output_prefixes"] == [
        "${var.crops_prefix}",
        "${var.overview_prefix}",
        "${var.markers_prefix}",
        "${var.search_results_prefix}",
    ]
    condition = local["outputs_write_condition"]
    assert "for prefix in local.output_prefixes" in condition
    assert 'resource.name.startsWith(\\"${local.object_name_root}${prefix}\\")' in condition
    # storage.objects.list is checked on the bucket: allowed only for list prefixes under crops_prefix.
    assert (
        'api.getAttribute(\\"storage.googleapis.com/objectListPrefix\\", \\"\\").startsWith(\\"${var.crops_prefix}\\")'
    ) in condition
    # The list permission the function uses is only ever called with the crops prefix.
    calls = {p.name: p.read_text().count("list_names(") for p in (ROOT / "segmentation").glob("*.py")}
    calls.pop("storage.py")  # the definitions
    calls.pop("memory_storage.py")
    assert {name: n for name, n in calls.items() if n} == {"outputs.py": 1}
    assert "list_names(names.bucket, names.crops_glob_prefix)" in (ROOT / "segmentation" / "outputs.py").read_text()


def test_service_accounts_are_distinct_and_each_is_used_for_its_job():
    accounts = config()["resource"]["google_service_account"]
    assert set(accounts) == {"runtime", "trigger", "build"}
    ids = {body["account_id"] for body in accounts.values()}
    assert len(ids) == 3
    # account_id: 6-30 characters. local.base is at most "conveyor-" + 8 characters.
    longest = len("conveyor-") + 8 + max(len(i.split("}")[-1]) for i in ids)
    assert longest <= 30


def test_outputs_give_what_to_do_after_apply():
    outputs = config()["output"]
    assert {
        "images_bucket",
        "upload_command",
        "objects_table",
        "images_table",
        "function_name",
        "example_query",
    } <= set(outputs)
    assert "${var.source_prefix}" in outputs["upload_command"]["value"]
    assert "gcloud storage cp" in outputs["upload_command"]["value"]
    assert "local.objects_table_id" in outputs["example_query"]["value"]


# --- Dead letters -----------------------------------------------------------------------------------------


def _dead_letter_script() -> tuple[str, dict[str, str]]:
    """The local-exec script that puts the dead-letter policy on the trigger's subscription, as
    bash receives it, and its environment (Terraform expressions)."""
    policy = resource("terraform_data", "trigger_dead_letter_policy")
    (provisioner,) = policy["provisioner"]
    local_exec = provisioner["local-exec"]
    assert local_exec["interpreter"] == ["/bin/bash", "-c"]
    # python-hcl2 keeps a heredoc's quotes and backslashes escaped.
    script = re.sub(r'\\(["\\])', r"\1", local_exec["command"])
    return script, local_exec["environment"]


def test_dead_letter_topic_and_subscription_keep_undelivered_events_for_the_retention():
    topic = resource("google_pubsub_topic", "dead_letter")
    subscription = resource("google_pubsub_subscription", "dead_letter")
    assert ref(subscription["topic"]) == "google_pubsub_topic.dead_letter.id"
    retention = "${local.dead_letter_retention}"
    assert topic["message_retention_duration"] == subscription["message_retention_duration"] == retention
    assert config()["locals"]["dead_letter_retention"] == "${var.dead_letter_retention_days * 86400}s"
    assert default_of("dead_letter_retention_days") == 7
    assert block(subscription, "expiration_policy")["ttl"] == ""  # never deleted for being unread
    assert "push_config" not in subscription  # a pull subscription: kept until someone reads it
    assert {"dead_letter_topic", "dead_letter_subscription"} <= set(config()["output"])
    assert ref(config()["output"]["dead_letter_subscription"]["value"]) == "google_pubsub_subscription.dead_letter.id"


def test_the_pubsub_service_agent_may_publish_dead_letters_and_ack_on_the_trigger_subscription():
    assert config()["locals"]["pubsub_agent_member"] == (
        "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
    )
    grant = resource("google_pubsub_topic_iam_member", "pubsub_agent_publishes_dead_letters")
    assert (grant["role"], ref(grant["member"])) == ("roles/pubsub.publisher", "local.pubsub_agent_member")
    script, env = _dead_letter_script()
    assert ref(env["PUBSUB_AGENT"]) == "local.pubsub_agent_member"
    assert "--role=roles/pubsub.subscriber" in script


def test_the_trigger_subscription_gets_the_dead_letter_policy_whenever_the_trigger_changes(tmp_path):
    policy = resource("terraform_data", "trigger_dead_letter_policy")
    trigger = "google_cloudfunctions2_function.segmentation.event_trigger[0].trigger"
    assert {ref(value) for value in policy["triggers_replace"]} >= {
        trigger,
        "google_pubsub_topic.dead_letter.id",
        "var.dead_letter_max_delivery_attempts",
        "local.dead_letter_retention",
    }
    script, env = _dead_letter_script()
    assert {key: ref(value) for key, value in env.items()} == {
        "TRIGGER": trigger,
        "PUBSUB_AGENT": "local.pubsub_agent_member",
        "DEAD_LETTER_TOPIC": "google_pubsub_topic.dead_letter.id",
        "MAX_DELIVERY_ATTEMPTS": "tostring(var.dead_letter_max_delivery_attempts)",
        "RETENTION": "local.dead_letter_retention",
    }

    # Run the script as Terraform would, with a gcloud that records its arguments.
    calls = tmp_path / "calls"
    gcloud = tmp_path / "bin" / "gcloud"
    gcloud.parent.mkdir()
    gcloud.write_text(
        '#!/bin/bash\nprintf "%s\\n" "$*" >> "$CALLS"\n'
        '[ "$1 $2" = "eventarc triggers" ] && echo projects/p/subscriptions/eventarc-eu-t-sub-1\n'
        "exit 0\n"
    )
    gcloud.chmod(0o755)
    values = {
        "TRIGGER": "projects/p/locations/eu/triggers/t",
        "PUBSUB_AGENT": "serviceAccount:agent",
        "DEAD_LETTER_TOPIC": "projects/p/topics/conveyor-prod-dead-letter",
        "MAX_DELIVERY_ATTEMPTS": "100",
        "RETENTION": "604800s",
        "CALLS": str(calls),
        "PATH": f"{gcloud.parent}:{os.environ['PATH']}",
    }
    subprocess.run(["/bin/bash", "-c", script], env=values, check=True, timeout=30)
    subscription = "projects/p/subscriptions/eventarc-eu-t-sub-1"
    assert calls.read_text().splitlines() == [
        "eventarc triggers describe projects/p/locations/eu/triggers/t --format=value(transport.pubsub.subscription)",
        f"pubsub subscriptions add-iam-policy-binding {subscription} --member=serviceAccount:agent "
        "--role=roles/pubsub.subscriber --condition=None --quiet",
        f"pubsub subscriptions update {subscription} --dead-letter-topic=projects/p/topics/conveyor-prod-dead-letter "
        "--max-delivery-attempts=100 --message-retention-duration=604800s",
    ]
    # No subscription found (a trigger without Pub/Sub transport): the apply fails, never a silent no-op.
    gcloud.write_text('#!/bin/bash\nprintf "%s\\n" "$*" >> "$CALLS"\nexit 0\n')
    failed = subprocess.run(["/bin/bash", "-c", script], env=values, timeout=30)
    assert failed.returncode != 0


def test_events_are_dead_lettered_before_the_trigger_subscription_would_drop_them():
    attempts, retention = "var.dead_letter_max_delivery_attempts", "var.dead_letter_retention_days"
    assert default_of("dead_letter_max_delivery_attempts") == 100  # Pub/Sub's maximum: the latest possible
    for variable, low, high in ((attempts, 5, 100), (retention, 1, 31)):
        validation = block(config()["variable"][variable.split(".")[1]], "validation")["condition"]
        assert f"{variable} >= {low}" in validation and f"{variable} <= {high}" in validation
    give_up, retained = (
        ref(p["condition"])
        for p in block(resource("terraform_data", "trigger_dead_letter_policy"), "lifecycle")["precondition"]
    )
    assert retained == f"{attempts} * (var.function_timeout_seconds + 600) < {retention} * 86400"
    assert give_up == (f"var.give_up_after_s < sum([for k in range({attempts} - 1) : min(600, 10 * pow(2, k))])")
    for env in (None, *ENVS):
        values = tfvars(env) if env else {}
        get = lambda name: values.get(name, default_of(name))  # noqa: B023 - used within the iteration
        worst_case_s = get("dead_letter_max_delivery_attempts") * (get("function_timeout_seconds") + 600)
        assert worst_case_s < get("dead_letter_retention_days") * 86400, env
        # The function records its failed row before Pub/Sub can have used up the attempts.
        fastest_s = sum(min(600, 10 * 2**k) for k in range(get("dead_letter_max_delivery_attempts") - 1))
        assert get("give_up_after_s") < fastest_s, env


# --- checkov --------------------------------------------------------------------------------------------


def _checkov() -> Path:
    path = Path(os.environ.get("CHECKOV_BIN", ROOT / ".venv-tools" / "bin" / "checkov"))
    if not path.exists():
        pytest.fail(f"checkov not found at {path}: run `make install` (it installs checkov into .venv-tools/)")
    return path


@pytest.mark.parametrize("env", (None, *ENVS))
def test_checkov_reports_no_failed_check_and_every_skip_is_justified_inline(env):
    command = [
        str(_checkov()),
        "--directory",
        str(TF),
        "--framework",
        "terraform",
        "--compact",
        "--skip-download",
        "--output",
        "json",
    ]
    if env:
        command += ["--var-file", str(TF / "envs" / f"{env}.tfvars")]
    # --skip-download and BC_SKIP_MAPPING: no calls to Prisma Cloud (there is no network anyway).
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"},
    )
    assert run.returncode in (0, 1), run.stderr[-3000:]
    report = json.loads(run.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed_checks"]]
    assert not failed, f"checkov failed checks: {failed}"
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 20
    sources = {path.name: path.read_text() for path in TF.glob("*.tf")}
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) > 40, f"{check['check_id']} on {check['resource']} is skipped without a real reason"
        inline = f"#checkov:skip={check['check_id']}:{reason}"
        assert inline in sources[Path(check["file_path"]).name], f"{check['check_id']} must be skipped inline"


# --- The source archive ------------------------------------------------------------------------------------


def _archive_files() -> list[str]:
    """The files data.archive_file.function_source packs, by the patterns in storage.tf
    (fileset() semantics: files only, paths relative to the repository root)."""
    local = config()["locals"]
    assert ref(local["function_source_root"]) == 'abspath("${path.module}/..")'
    assert "fileset(local.function_source_root, pattern)" in local["function_source_files"]
    assert "for pattern in local.function_source_patterns" in local["function_source_files"]
    archive = config()["data"]["archive_file"]["function_source"]
    content = block(archive["dynamic"][0]["source"], "content")
    assert ref(archive["dynamic"][0]["source"]["for_each"]) == "local.function_source_files"
    assert ref(content["content"]) == 'file("${local.function_source_root}/${source.value}")'
    assert ref(content["filename"]) == "source.value"

    files: set[str] = set()
    for pattern in local["function_source_patterns"]:
        files |= {path.relative_to(ROOT).as_posix() for path in ROOT.glob(pattern) if path.is_file()}
    return sorted(files)


def _build_archive(destination: Path) -> Path:
    path = destination / "function-source.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in _archive_files():
            # file() reads UTF-8 text; archive_file writes it back as is.
            archive.writestr(name, (ROOT / name).read_text(encoding="utf-8").encode("utf-8"))
    return path


def test_archive_holds_main_requirements_and_the_whole_package_and_nothing_else():
    files = set(_archive_files())
    package = {path.relative_to(ROOT).as_posix() for path in (ROOT / "segmentation").rglob("*.py")}
    package |= {path.relative_to(ROOT).as_posix() for path in SCHEMA_DIR.glob("*.json")}
    assert {"main.py", "requirements.txt"} | package == files
    assert not any("__pycache__" in name or name.startswith(("tests/", "devtools/", ".venv")) for name in files)
    # Developer-only code (local emulation, stand-ins) lives in devtools/, which is never shipped.
    assert list((ROOT / "devtools").rglob("*.py")), "devtools/ holds the developer-only modules"
    assert not any("local" in Path(name).stem for name in package), "local emulation is outside the package"

    # Every module of this repository that importing main loads is in the archive.
    probe = (
        "import json, sys, main; print(json.dumps([getattr(m, '__file__', None) for m in list(sys.modules.values())]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert run.returncode == 0, run.stderr
    loaded = {Path(f).resolve() for f in json.loads(run.stdout.splitlines()[-1]) if f}
    ours = {p.relative_to(ROOT).as_posix() for p in loaded if ROOT in p.parents and ".venv" not in p.parts}
    assert ours and ours <= files, f"imported but not archived: {ours - files}"


def _locked(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of a pip requirements file, every requirement pinned with hashes."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        name, version = requirement.split(";")[0].strip().split("==")
        hashes = frozenset(option.strip() for option in options)
        assert hashes and all(h.startswith("sha256:") for h in hashes), f"{path.name}: {name} has no hash"
        pins[name.lower().replace("_", "-")] = (version, hashes)
    return pins


def test_the_archive_ships_a_complete_hashed_lock_of_the_direct_pins_and_dev_installs_the_same():
    deployed = _locked(ROOT / "requirements.txt")
    for line in (ROOT / "requirements.in").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            assert deployed[name.lower().replace("_", "-")][0] == version, name
    # Hash-checking mode needs every package, transitive ones included: spot-check a few the SDKs pull in.
    assert {"google-auth", "protobuf", "pydantic", "requests"} <= deployed.keys()
    dev = _locked(ROOT / "requirements-dev.txt")
    assert {name: dev.get(name) for name in deployed} == deployed, "the dev lock must install what is deployed"


def _third_party_imports(files: list[str]) -> list[list[str]]:
    """[module, name, ...] for every absolute import of a non-stdlib, non-local module in the archive,
    including the lazy ones inside functions."""
    found: dict[str, set[str]] = {}
    for name in files:
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse((ROOT / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.setdefault(alias.name, set())
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.setdefault(node.module, set()).update(alias.name for alias in node.names)
    local_roots = {"main", "segmentation", "__future__"}
    return sorted(
        [module, *sorted(names)]
        for module, names in found.items()
        if module.split(".")[0] not in sys.stdlib_module_names | local_roots
    )


_CLEAN_PROBE = r"""
import importlib, json, pkgutil, sys
from pathlib import Path

here = Path.cwd().resolve()
import main
assert callable(main.on_object_finalized), "entry point"
import segmentation
assert Path(segmentation.__file__).resolve().parent == here / "segmentation", segmentation.__file__
for info in pkgutil.walk_packages(segmentation.__path__, "segmentation."):
    importlib.import_module(info.name)
from segmentation.schema import TABLES, load_schema
for table in TABLES:
    assert load_schema(table), table
for module, *names in json.loads(sys.argv[1]):
    imported = importlib.import_module(module)
    for name in names:
        if not hasattr(imported, name):
            importlib.import_module(module + "." + name)
repo_paths = [p for p in sys.path if p and Path(p).resolve() == Path(sys.argv[2]).resolve()]
assert not repo_paths, repo_paths
print("ok", main.on_object_finalized.__module__)
"""


def _clean_interpreter() -> Path:
    """A virtualenv with only the deployed lock (requirements.txt, hashed) installed, cached under
    .venv-archive-check/ by the hash of requirements.txt and the Python version (built once, then reused)."""
    requirements = (ROOT / "requirements.txt").read_bytes()
    key = hashlib.sha256(requirements + sys.version.encode()).hexdigest()[:16]
    cache = ROOT / ".venv-archive-check"
    venv = cache / key
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    cache.mkdir(exist_ok=True)
    for stale in cache.iterdir():
        if stale.name != key:
            shutil.rmtree(stale, ignore_errors=True)
    building = cache / f"{key}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, timeout=300)
    install = subprocess.run(
        [
            str(building / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "-r",
            str(ROOT / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-4000:]
    check = subprocess.run(
        [str(building / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
    (building / ".complete").write_text(hashlib.sha256(requirements).hexdigest())
    try:
        building.rename(venv)
    except OSError:  # another run finished first
        shutil.rmtree(building, ignore_errors=True)
    return python


@pytest.mark.timeout(1200)
def test_function_imports_from_the_archive_in_a_clean_interpreter(tmp_path):
    archive = _build_archive(tmp_path)
    unpacked = tmp_path / "function"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(unpacked)
    python = _clean_interpreter()
    imports = _third_party_imports(_archive_files())
    assert ["google.genai"] in [entry[:1] for entry in imports]  # the probe really covers the libraries
    # -s: no user site-packages; -E: no PYTHON* variables; cwd: the unpacked archive only.
    run = subprocess.run(
        [str(python), "-s", "-E", "-c", _CLEAN_PROBE, json.dumps(imports), str(ROOT)],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert run.stdout.strip().splitlines()[-1] == "ok main"
