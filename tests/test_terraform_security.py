"""Terraform as a GCP security reviewer reads it (issue 15), checked offline with python-hcl2.

- The runtime account's custom roles hold exactly the permissions of the API calls the function
  makes, recorded through the real google-genai and google-cloud-bigquery clients against the
  stand-in servers; no predefined aiplatform.user / bigquery.dataEditor is left.
- Customer-managed keys: one variable per encrypted resource, the provider's attributes, and the
  service agents' key grants.
- Retention: prod and the defaults keep data for a stated time; the README table says the same.
- Environments sharing a project: names carry the environment, and project-wide grants are
  managed by one environment only.
- terraform/README.md's tables are what tools/terraform_docs.py generates; the examples parse
  and call the module with its declared inputs.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import hcl2
import pytest
from google.oauth2.credentials import Credentials
from PIL import Image

from devtools.standins.bigquery_server import FakeBigQuery
from devtools.standins.gemini_server import Answer, FakeGeminiServer, sample_text
from segmentation.config import Config
from segmentation.gemini import GeminiDetector
from segmentation.images import ModelInput
from tests.fixtures import shared_fixture
from tests.harness import running_stack, use_bigquery
from tests.test_terraform import _HCL_OPTIONS, ENVS, TF, _load, block, config, default_of, ref, resource, tfvars
from tools import terraform_docs

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = "${local.runtime_member}"

# The IAM permissions each REST method the function calls is authorised with (Google's docs:
# Vertex AI generative AI access control, "Make prompt requests"; BigQuery "Use the legacy
# streaming API", required permissions, less bigquery.datasets.get, which a table binding cannot
# carry and insertAll on the table does not need).
PERMISSIONS_OF_METHOD = {
    "generateContent": {"aiplatform.endpoints.predict"},
    "insertAll": {"bigquery.tables.updateData", "bigquery.tables.get"},
    # Lost-bag search (tests/test_search_bigquery.py records it): BigQuery "Query table data",
    # required permissions: the job on the project, the rows on the table.
    "query": {"bigquery.jobs.create", "bigquery.tables.getData"},
}


def _method(path: str) -> str:
    """The REST method of a request path: ".../models/m:generateContent" -> "generateContent"."""
    path = path.split("?", 1)[0]
    return path.rsplit(":", 1)[1] if ":" in path.rsplit("/", 1)[-1] else path.rsplit("/", 1)[-1]


def _custom_role(name: str) -> dict:
    return resource("google_project_iam_custom_role", name)


# --- Custom roles ------------------------------------------------------------------------------------


def test_runtime_roles_hold_exactly_the_permissions_of_the_calls_the_function_makes(tmp_path, monkeypatch):
    # The function, through functions-framework, with rows going to the BigQuery stand-in.
    with running_stack(tmp_path / "results.sqlite", monkeypatch) as stack, FakeBigQuery() as bigquery:
        use_bigquery(monkeypatch, bigquery.url)
        stack.gemini.enqueue(Answer(sample_text(1)))
        blob = stack.upload("raw/cam1/cupcakes.png", shared_fixture("gemini", "sample_1.png").read_bytes())
        assert stack.deliver(stack.event_for(blob)).status_code == 200
        assert bigquery.rows("test-project.conveyor.images"), "the image row reached the stand-in"
        # The stand-in answers POST only: a table read (GET) would have failed the insert above.
        with bigquery._state.lock:
            bigquery_paths = [request["path"] for request in bigquery._state.requests]
        gemini_paths = [request.path for request in stack.gemini.requests]

    # Vertex mode (what the deployed function uses): the same method, on a publisher model.
    image = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image, format="JPEG")
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(name, raising=False)
    with FakeGeminiServer(lambda request: Answer("[]")) as vertex:
        monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", vertex.base_url)
        detector = GeminiDetector(
            Config.from_env({"GOOGLE_CLOUD_PROJECT": "p", "GOOGLE_CLOUD_LOCATION": "global"}),
            credentials=Credentials(token="test-token"),
        )
        try:
            detector.detect(
                ModelInput(data=image.getvalue(), mime_type="image/jpeg", width=64, height=48),
                (64, 48),
                deadline=time.monotonic() + 10,
            )
        finally:
            detector.close()
        (vertex_request,) = vertex.requests
    assert vertex_request.api == "vertex"
    assert re.fullmatch(
        r"/v1(beta1)?/projects/p/locations/global/publishers/google/models/[^/:]+:generateContent", vertex_request.path
    ), vertex_request.path

    assert bigquery_paths and all(
        re.fullmatch(r"/bigquery/v2/projects/[^/]+/datasets/[^/]+/tables/[^/]+/insertAll", path.split("?", 1)[0])
        for path in bigquery_paths
    ), bigquery_paths
    gemini_methods = {_method(path) for path in [*gemini_paths, vertex_request.path]}
    bigquery_methods = {_method(path) for path in bigquery_paths}
    assert gemini_methods == {"generateContent"} and bigquery_methods == {"insertAll"}

    gemini_role, rows_role = _custom_role("gemini_caller"), _custom_role("row_inserter")
    assert set(gemini_role["permissions"]) == set().union(*(PERMISSIONS_OF_METHOD[m] for m in gemini_methods))
    assert set(rows_role["permissions"]) == set().union(*(PERMISSIONS_OF_METHOD[m] for m in bigquery_methods))


def test_custom_roles_are_bound_to_the_runtime_account_on_the_project_and_the_two_tables_only():
    vertex = resource("google_project_iam_member", "runtime_calls_vertex")
    assert ref(vertex["role"]) == "google_project_iam_custom_role.gemini_caller.name"
    assert vertex["member"] == RUNTIME and ref(vertex["project"]) == "var.project_id"

    bindings = config()["resource"]["google_bigquery_table_iam_member"]
    inserts = {name: body for name, body in bindings.items() if name.startswith("runtime_inserts_")}
    assert set(inserts) == {
        f"runtime_inserts_{table}" for table in ("objects", "images", "embeddings", "search_matches")
    }
    assert {ref(body["table_id"]) for body in inserts.values()} == {
        f"google_bigquery_table.{table}.table_id" for table in ("objects", "images", "embeddings", "search_matches")
    }
    for body in inserts.values():
        assert ref(body["role"]) == "google_project_iam_custom_role.row_inserter.name" and body["member"] == RUNTIME
    # Reading rows: the embeddings table only (lost-bag search), never the dataset.
    assert set(bindings) - set(inserts) == {"runtime_reads_embeddings"}
    reads = bindings["runtime_reads_embeddings"]
    assert ref(reads["table_id"]) == "google_bigquery_table.embeddings.table_id" and reads["member"] == RUNTIME
    assert ref(reads["role"]) == "google_project_iam_custom_role.row_reader.name"
    # No dataset-level BigQuery grant; on the project only the job permission, which has no narrower resource.
    assert "google_bigquery_dataset_iam_member" not in config()["resource"]
    project_roles = {
        body["role"] for body in config()["resource"]["google_project_iam_member"].values() if body["member"] == RUNTIME
    }
    assert project_roles == {
        "${google_project_iam_custom_role.gemini_caller.name}",
        "${google_project_iam_custom_role.query_runner.name}",
    }

    # The predefined roles a reviewer flagged are gone from every .tf file, comments aside.
    text = repr(config())
    assert "roles/aiplatform.user" not in text and "roles/bigquery.dataEditor" not in text
    # A role change adds the new grant before removing the old: no event meets a missing permission.
    queries = resource("google_project_iam_member", "runtime_runs_queries")
    for body in [vertex, queries, *bindings.values()]:
        assert block(body, "lifecycle")["create_before_destroy"] is True


@pytest.mark.parametrize("environment", ["dev", "prod", "a", "stage-eu"])
@pytest.mark.parametrize("suffix", ["", "_v2", "_" + "x" * 15])
def test_custom_role_ids_are_valid_and_per_environment(environment, suffix):
    prefix = config()["locals"]["role_id_prefix"]
    assert prefix == 'conveyor_${replace(var.environment, "-", "_")}${var.custom_role_suffix}'
    ids = set()
    for name in ("gemini_caller", "row_inserter", "query_runner", "row_reader"):
        role = _custom_role(name)
        assert ref(role["project"]) == "var.project_id"
        role_id = (
            role["role_id"]
            .replace("${local.role_id_prefix}", prefix)
            .replace('${replace(var.environment, "-", "_")}', environment.replace("-", "_"))
            .replace("${var.custom_role_suffix}", suffix)
        )
        # IAM: 3-64 characters, letters, digits, underscores and periods.
        assert re.fullmatch(r"[A-Za-z0-9_.]{3,64}", role_id), role_id
        assert environment.replace("-", "_") in role_id
        ids.add(role_id)
    assert len(ids) == 4
    assert re.fullmatch(
        config()["variable"]["custom_role_suffix"]["validation"][0]["condition"]
        .split('regex("', 1)[1]
        .split('",', 1)[0]
        .replace("\\\\", "\\"),
        suffix,
    )


# --- Customer-managed keys -------------------------------------------------------------------------------

KMS_VARIABLES = ("bucket_kms_key_name", "bigquery_kms_key_name", "dead_letter_kms_key_name")


def test_cmek_is_optional_per_resource_and_uses_the_providers_attributes():
    for name in KMS_VARIABLES:
        assert default_of(name) == "", f"{name}: empty = Google-managed keys"
        condition = config()["variable"][name]["validation"][0]["condition"]
        assert f'var.{name} == ""' in condition and "cryptoKeys" in condition

    for bucket_name in ("images", "outputs"):  # the outputs bucket shares the images bucket's key
        bucket = resource("google_storage_bucket", bucket_name)
        (encryption,) = [item["encryption"] for item in bucket["dynamic"] if "encryption" in item]
        assert 'var.bucket_kms_key_name != ""' in encryption["for_each"]
        assert ref(block(encryption, "content")["default_kms_key_name"]) == "encryption.value"
        assert "google_kms_crypto_key_iam_member.service_agents_use_keys" in json.dumps(bucket["depends_on"])

    dataset = resource("google_bigquery_dataset", "results")
    (default_encryption,) = [
        item["default_encryption_configuration"]
        for item in dataset["dynamic"]
        if "default_encryption_configuration" in item
    ]
    assert 'var.bigquery_kms_key_name != ""' in default_encryption["for_each"]
    assert ref(block(default_encryption, "content")["kms_key_name"]) == "default_encryption_configuration.value"

    topic = resource("google_pubsub_topic", "dead_letter")
    assert ref(topic["kms_key_name"]) == 'var.dead_letter_kms_key_name != "" ? var.dead_letter_kms_key_name : null'

    # Each resource is created only after its service agent may use the key.
    for body in (bucket, dataset, topic):
        assert "${google_kms_crypto_key_iam_member.service_agents_use_keys}" in body["depends_on"]


def test_each_service_agent_may_use_its_key_and_nothing_more():
    grant = resource("google_kms_crypto_key_iam_member", "service_agents_use_keys")
    assert ref(grant["for_each"]) == "local.kms_grants"
    assert grant["role"] == "roles/cloudkms.cryptoKeyEncrypterDecrypter"
    assert ref(grant["crypto_key_id"]) == "each.value.key" and ref(grant["member"]) == "each.value.member"

    grants = config()["locals"]["kms_grants"]
    agents = {
        "var.create_bucket || var.separate_outputs_bucket ? var.bucket_kms_key_name": (
            "data.google_storage_project_service_account.gcs_agent.email_address"
        ),
        "var.bigquery_kms_key_name": "data.google_bigquery_default_service_account.bq_agent",
        "var.dead_letter_kms_key_name": "local.pubsub_agent_member",
    }
    for key, agent in agents.items():
        assert key in grants and agent in grants, (key, agent)
    assert 'if var.manage_shared_iam && grant.key != ""' in grants
    bq_agent = config()["data"]["google_bigquery_default_service_account"]["bq_agent"]
    assert ref(bq_agent["count"]) == 'var.bigquery_kms_key_name != "" ? 1 : 0'


# --- Retention -------------------------------------------------------------------------------------------

RETENTION = ("raw_retention_days", "outputs_retention_days", "partition_expiration_days", "search_retention_days")


def _readme_retention() -> dict[str, dict[str, int]]:
    """The README's retention table: environment -> variable -> days (0 = forever)."""
    deploy = (ROOT / "README.md").read_text().split("## Deploy", 1)[1].split("\n## ", 1)[0]
    table = deploy.split("### Retention", 1)[1]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) == len(RETENTION) + 1 and cells[0] in (*ENVS, "default"):
            rows[cells[0]] = {
                name: int(re.match(r"\d+", cell)[0]) for name, cell in zip(RETENTION, cells[1:], strict=False)
            }
    return rows


def test_prod_and_the_defaults_keep_data_for_a_stated_time_and_the_readme_says_so():
    readme = _readme_retention()
    assert set(readme) == {*ENVS, "default"}
    for name in RETENTION:
        assert default_of(name) > 0, f"{name} must not default to forever"
        assert readme["default"][name] == default_of(name)
        for env in ENVS:
            value = tfvars(env).get(name, default_of(name))
            assert value > 0, f"{env}: {name} = 0 keeps data forever"
            assert readme[env][name] == value, (env, name)
    prod = tfvars("prod")
    assert (prod["raw_retention_days"], prod["outputs_retention_days"], prod["partition_expiration_days"]) == (
        30,
        90,
        400,
    )


# --- Environments in one project ---------------------------------------------------------------------------


def test_names_carry_the_environment_so_two_environments_can_share_a_project():
    assert default_of("dataset_id") == ""
    assert config()["locals"]["dataset_id"] == (
        '${var.dataset_id != "" ? var.dataset_id : "conveyor_${replace(var.environment, "-", "_")}"}'
    )
    assert ref(resource("google_bigquery_dataset", "results")["dataset_id"]) == "local.dataset_id"
    assert config()["locals"]["base"] == "conveyor-${var.environment}"
    named = {
        ("google_service_account", "runtime"): "account_id",
        ("google_service_account", "trigger"): "account_id",
        ("google_service_account", "build"): "account_id",
        ("google_pubsub_topic", "dead_letter"): "name",
        ("google_pubsub_subscription", "dead_letter"): "name",
        ("google_storage_bucket", "images"): "name",
        ("google_storage_bucket", "function_source"): "name",
        ("google_project_iam_custom_role", "gemini_caller"): "role_id",
        ("google_project_iam_custom_role", "row_inserter"): "role_id",
    }
    for (rtype, name), attribute in named.items():
        value = resource(rtype, name)[attribute]
        assert "${local.base}" in value or "${local.role_id_prefix}" in value, (rtype, name, value)
    assert "var.environment" in config()["locals"]["function_name"]


def test_project_wide_grants_are_managed_by_one_environment_only():
    assert default_of("manage_shared_iam") is True
    publisher = resource("google_project_iam_member", "gcs_agent_publishes_events")
    assert ref(publisher["count"]) == "var.manage_shared_iam ? 1 : 0"
    # Existing states keep the binding: its address gains an index, and a moved block says so.
    moved = _load(TF / "iam.tf").get("moved", [])
    assert {
        "from": "${google_project_iam_member.gcs_agent_publishes_events}",
        "to": "${google_project_iam_member.gcs_agent_publishes_events[0]}",
    } in moved
    assert "var.manage_shared_iam" in config()["locals"]["kms_grants"]
    deploy = (ROOT / "README.md").read_text().split("## Deploy", 1)[1].split("\n## ", 1)[0]
    assert "manage_shared_iam = false" in deploy


# --- terraform/README.md and examples -------------------------------------------------------------------------


def test_terraform_readme_tables_are_what_the_generator_writes():
    readme = (TF / "README.md").read_text()
    assert terraform_docs.replace_tables(readme, terraform_docs.render()) == readme
    assert terraform_docs.main(["--check"]) == 0
    for name in config()["variable"]:
        assert f"\n| {name} | " in readme, name
    for name in config()["output"]:
        assert f"\n| {name} | " in readme, name
    assert "## Usage" in readme and "```hcl" in readme and 'module "conveyor"' in readme


def test_the_generator_notices_a_stale_table(tmp_path):
    module = tmp_path / "module"
    module.mkdir()
    (module / "variables.tf").write_text(
        'variable "b" {\n  type = number\n  default = 3\n  description = "B | b"\n}\n'
        'variable "a" {\n  type = map(string)\n  description = "A"\n}\n'
    )
    (module / "outputs.tf").write_text('output "x" {\n  description = "X"\n  value = 1\n}\n')
    tables = terraform_docs.render(module)
    assert "| a | A | `map(string)` | n/a | yes |" in tables
    assert "| b | B \\| b | `number` | `3` | no |" in tables
    assert tables.index("| a |") < tables.index("| b |") and "| x | X |" in tables
    stale = f"intro\n{terraform_docs.BEGIN}\n| old |\n{terraform_docs.END}\nafter\n"
    assert terraform_docs.replace_tables(stale, tables) == f"intro\n{tables}after\n"


@pytest.mark.parametrize("example", ["single-project-dev", "prod-cmek"])
def test_examples_parse_and_call_the_module_with_its_declared_inputs(example):
    with open(TF / "examples" / example / "main.tf", encoding="utf-8") as handle:
        parsed = hcl2.load(handle, serialization_options=_HCL_OPTIONS)
    (module,) = [body for item in parsed["module"] for body in item.values()]
    assert module["source"] == "../.."
    inputs = set(module) - {"source"}
    variables = config()["variable"]
    assert inputs <= set(variables), f"undeclared inputs {inputs - set(variables)}"
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= inputs, f"missing required inputs {required - inputs}"
    used_outputs = set(re.findall(r"module\.conveyor\.(\w+)", repr(parsed.get("output", []))))
    assert used_outputs and used_outputs <= set(config()["output"])
    if example == "prod-cmek":
        assert {name for name in inputs if name.endswith("_kms_key_name")} == set(KMS_VARIABLES)
    else:
        assert module["manage_shared_iam"] is False and module["environment"] == "dev"
