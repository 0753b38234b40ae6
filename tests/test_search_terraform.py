"""Terraform for lost-bag search (issue 18), checked offline on the parsed HCL (python-hcl2).

- The function's environment carries every search setting, from variables whose defaults are
  the code's, and the two new tables' ids.
- The embeddings and search_matches tables take their schema from segmentation/schema/, are
  partitioned and clustered for searches, and the vector index is created by a query job whose
  DDL stores every column the store's query reads.
- Queries under search/ reach the function through the existing trigger; the function's account
  may read them, write results, insert into the new tables and run the search query; the people
  in `search_uploaders` may only add queries and read results (IAM conditions, evaluated here on
  object names); queries, results and match rows follow `search_retention_days`.
checkov over the whole module stays at zero failed checks (tests/test_terraform.py runs it).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from segmentation.config import SETTINGS, Config
from segmentation.schema import load_schema
from segmentation.search import bigquery_store
from tests.test_terraform import (
    ENVS,
    TF,
    _regex_of,
    block,
    config,
    default_of,
    environment,
    ref,
    resource,
    tfvars,
)

SEARCH_SETTINGS = {
    "SEARCH_PREFIX": "search_prefix",
    "SEARCH_RESULTS_PREFIX": "search_results_prefix",
    "EMBEDDER": "embedder",
    "EMBEDDING_MODEL": "embedding_model",
    "EMBEDDING_DIMENSIONS": "embedding_dimensions",
    "SEARCH_TOP_K": "search_top_k",
    "SEARCH_RERANK": "search_rerank",
}
DEFAULTS = {setting.env: setting.default for setting in SETTINGS}
BUCKET = "p-conveyor-prod-images"
OUTPUTS = "p-conveyor-prod-outputs"


# --- The function's environment ------------------------------------------------------------------


@pytest.mark.parametrize("env_name, variable", SEARCH_SETTINGS.items())
def test_each_search_setting_comes_from_a_variable_defaulting_to_the_codes_default(env_name, variable):
    assert re.findall(r"\bvar\.([a-z0-9_]+)", environment()[env_name]) == [variable]
    value = default_of(variable)
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    assert shown == DEFAULTS[env_name], (variable, value)
    body = config()["variable"][variable]
    assert body.get("type") and len(body.get("description", "")) > 15
    if not isinstance(value, bool):
        assert body.get("validation"), f"{variable} is not validated"


def test_the_new_tables_ids_reach_the_function():
    env = environment()
    assert ref(env["BQ_EMBEDDINGS_TABLE"]) == "local.embeddings_table_id"
    assert ref(env["BQ_SEARCH_MATCHES_TABLE"]) == "local.search_matches_table_id"
    cfg = Config.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": "p",
            "BQ_OBJECTS_TABLE": "p.conveyor_prod.objects",
            "BQ_IMAGES_TABLE": "p.conveyor_prod.images",
            "BQ_EMBEDDINGS_TABLE": "p.conveyor_prod.embeddings",
            "BQ_SEARCH_MATCHES_TABLE": "p.conveyor_prod.search_matches",
            "EMBEDDER": default_of("embedder"),
        }
    )
    assert cfg.bq_table("embeddings") == bigquery_store.BigQueryVectorStore.from_config(cfg).table_id
    # The deployed function has a Vertex backend, so EMBEDDER=auto indexes with Gemini.
    assert cfg.resolved_embedder == "gemini"


@pytest.mark.parametrize(
    "variable, good, bad",
    [
        ("embedder", ["auto", "gemini", "descriptor", "off"], ["Gemini", "", "clip"]),
        ("embedding_dimensions", [128, 768, 3072], [127, 3073, 768.5]),
        ("search_top_k", [1, 10, 100], [0, 101, 2.5]),
        ("search_retention_days", [0, 1, 30, 365], [-1, 1.5]),
    ],
)
def test_search_variables_are_validated_like_the_code(variable, good, bad):
    condition = ref(block(config()["variable"][variable], "validation")["condition"])
    for value in good:
        assert _holds(condition, variable, value), (variable, value)
    for value in bad:
        assert not _holds(condition, variable, value), (variable, value)


def _holds(condition: str, variable: str, value: Any) -> bool:
    """A validation condition of the forms used here, evaluated in Python for `value`."""
    expression = condition.replace(f"var.{variable}", repr(value)).replace("&&", " and ").replace("||", " or ")
    expression = re.sub(r"contains\((\[.*?\]), ('.*?'|\".*?\"|[^)]*)\)", r"(\2 in \1)", expression)
    expression = expression.replace("floor(", "__import__('math').floor(")
    return bool(eval(expression))  # our own .tf conditions, parsed above


@pytest.mark.parametrize("variable", ["search_prefix", "search_results_prefix"])
@pytest.mark.parametrize(
    "value, ok", [("search/", True), ("lost/found/", True), ("search", False), ("/s/", False), ('s")/', False)]
)
def test_search_prefixes_are_validated_like_the_other_prefixes(variable, value, ok):
    assert bool(_regex_of(variable).fullmatch(value)) is ok


def test_the_deployed_search_configuration_is_accepted_by_the_code():
    for env in (None, *ENVS):
        values = tfvars(env) if env else {}
        settings = {
            env_name: str(values.get(variable, default_of(variable))).lower()
            if isinstance(default_of(variable), bool)
            else str(values.get(variable, default_of(variable)))
            for env_name, variable in SEARCH_SETTINGS.items()
        }
        cfg = Config.from_env({"GOOGLE_CLOUD_PROJECT": "p", **settings})
        assert cfg.search_prefix == settings["SEARCH_PREFIX"]


# --- Tables and the vector index ------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, partition_field, clustering, expiration",
    [
        ("embeddings", "seen_at", ["camera"], "local.partition_expiration"),
        ("search_matches", "searched_at", ["query_uri"], "local.search_partition_expiration"),
    ],
)
def test_search_tables_are_partitioned_and_clustered_for_searches(table, partition_field, clustering, expiration):
    body = resource("google_bigquery_table", table)
    assert body["table_id"] == table
    assert ref(body["schema"]) == f'file("${{local.schema_dir}}/{table}.json")'
    assert ref(body["dataset_id"]) == "google_bigquery_dataset.results.dataset_id"
    assert ref(body["deletion_protection"]) == "var.deletion_protection"
    partitioning = block(body, "time_partitioning")
    assert (partitioning["type"], partitioning["field"]) == ("DAY", partition_field)
    assert ref(partitioning["expiration_ms"]) == expiration
    assert body["clustering"] == clustering
    columns = {column["name"]: column for column in load_schema(table)}
    assert columns[partition_field]["type"] == "TIMESTAMP" and columns[partition_field]["mode"] == "REQUIRED"
    assert set(clustering) <= set(columns)
    # Match rows go with the query photos.
    assert config()["locals"]["search_partition_expiration"] == (
        "${var.search_retention_days > 0 ? var.search_retention_days * 24 * 60 * 60 * 1000 : null}"
    )


def _ddl() -> str:
    return config()["locals"]["vector_index_ddl"]


def test_the_vector_index_is_created_by_a_query_job_once_the_table_exists():
    # No provider resource exists for a BigQuery vector index; the module must not pretend one does.
    assert not any("vector_index" in rtype for rtype in config()["resource"])
    job = resource("google_bigquery_job", "embeddings_vector_index")
    query = block(job, "query")
    assert ref(query["query"]) == "local.vector_index_ddl"
    assert query["use_legacy_sql"] is False
    # DDL takes no destination table: the provider's dispositions must be cleared.
    assert query["create_disposition"] == "" and query["write_disposition"] == ""
    assert ref(job["location"]) == "google_bigquery_dataset.results.location"
    # Job ids are unique in a project for good: a re-created table or a changed DDL needs a new id.
    job_id = job["job_id"]
    assert "${google_bigquery_table.embeddings.creation_time}" in job_id
    assert "${substr(sha256(local.vector_index_ddl), 0, 12)}" in job_id
    assert "${local.base}" in job_id
    sample = job_id.replace("${local.base}", "conveyor-stage-eu")
    sample = re.sub(r"\$\{[^}]*creation_time\}", "1764576000000", sample)
    sample = re.sub(r"\$\{substr\(sha256[^}]*\}", "0123456789ab", sample)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,1024}", sample), sample

    ddl = " ".join(_ddl().split())
    assert ddl.startswith("CREATE VECTOR INDEX IF NOT EXISTS `${local.vector_index_name}`")
    assert "ON `${local.embeddings_table_id}`(embedding)" in ddl
    assert "OPTIONS(index_type = 'IVF', distance_type = 'COSINE')" in ddl
    embedding = {column["name"]: column for column in load_schema("embeddings")}["embedding"]
    assert (embedding["type"], embedding["mode"]) == ("FLOAT64", "REPEATED")


def test_the_index_stores_every_column_the_search_query_reads():
    (stored,) = re.findall(r"STORING\(([^)]*)\)", _ddl())
    stored_columns = {column.strip() for column in stored.split(",")}
    read = set(bigquery_store.FILTER_COLUMNS) | set(bigquery_store.RESULT_COLUMNS)
    assert read <= stored_columns, read - stored_columns
    assert stored_columns <= {column["name"] for column in load_schema("embeddings")} - {"embedding"}
    # And the query's base subquery indeed reads only those columns and the embedding.
    sql = bigquery_store.SEARCH_SQL
    base = sql.split("FROM VECTOR_SEARCH(", 1)[1].split("'embedding'", 1)[0]
    identifiers = set(re.findall(r"\b([a-z_]+)\b", re.sub(r"@\w+|`[^`]*`|'[^']*'", "", base)))
    keywords = {"select", "from", "where", "and", "or", "is", "null", "lower", "like", "ifnull"}
    assert identifiers - keywords - {"embedding"} <= stored_columns
    assert "distance_type => 'COSINE'" in sql
    readme = (TF / "README.md").read_text()
    assert "CREATE VECTOR INDEX" in readme and "DROP VECTOR INDEX embeddings_embedding" in readme
    assert config()["locals"]["vector_index_name"] == "embeddings_embedding"
    assert " ".join(stored.split()) in " ".join(readme.split()), "the README shows the DDL the module runs"


# --- Queries reach the function ----------------------------------------------------------------------


def test_queries_under_search_reach_the_function_through_the_one_trigger():
    trigger = block(resource("google_cloudfunctions2_function", "segmentation"), "event_trigger")
    filters = trigger["event_filters"] if isinstance(trigger["event_filters"], list) else [trigger["event_filters"]]
    # Only the bucket is filtered: every object finalized in it, search/ included, is delivered.
    assert [(f["attribute"], ref(f["value"])) for f in filters] == [("bucket", "local.images_bucket_name")]
    assert "google_eventarc_trigger" not in config()["resource"]
    preconditions = json.dumps(block(resource("google_cloudfunctions2_function", "segmentation"), "lifecycle"))
    assert "!startswith(prefix, var.search_prefix) && !startswith(var.search_prefix, prefix)" in preconditions
    assert "concat(local.output_prefixes, [var.backgrounds_prefix, var.source_prefix])" in preconditions
    assert "${var.search_results_prefix}" in config()["locals"]["output_prefixes"]


# --- IAM: conditions evaluated on object names ---------------------------------------------------------


def _render(expression: str, **values: str) -> str:
    """An IAM condition as Terraform renders it, for literal values of its references."""
    rendered = expression.replace('\\"', '"')
    for name, value in values.items():
        rendered = rendered.replace("${" + name + "}", value)
    assert "${" not in rendered, rendered
    return rendered


def _allows(condition: str, *, name: str | None = None, list_prefix: str | None = None) -> bool:
    """Evaluate the CEL subset these conditions use: `||` of resource.name.startsWith("...") and
    api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("...")."""
    for clause in condition.split(" || "):
        on_name = re.fullmatch(r'resource\.name\.startsWith\("([^"]*)"\)', clause.strip())
        on_list = re.fullmatch(
            r'api\.getAttribute\("storage\.googleapis\.com/objectListPrefix", ""\)\.startsWith\("([^"]*)"\)',
            clause.strip(),
        )
        assert on_name or on_list, clause
        if on_name and name is not None and name.startswith(on_name.group(1)):
            return True
        if on_list and list_prefix is not None and list_prefix.startswith(on_list.group(1)):
            return True
    return False


def _object(bucket: str, name: str) -> str:
    return f"projects/_/buckets/{bucket}/objects/{name}"


def _defaults() -> dict[str, str]:
    return {f"var.{name}": default_of(name) for name in ("search_prefix", "search_results_prefix")}


def test_search_uploaders_may_only_add_queries_and_read_results():
    grants = config()["resource"]["google_storage_bucket_iam_member"]
    add, read = grants["search_uploaders_add_queries"], grants["search_uploaders_read_results"]
    for grant in (add, read):
        assert ref(grant["for_each"]) == "toset(var.search_uploaders)" and ref(grant["member"]) == "each.value"
    assert (add["role"], ref(add["bucket"])) == ("roles/storage.objectCreator", "local.images_bucket_name")
    assert (read["role"], ref(read["bucket"])) == ("roles/storage.objectViewer", "local.outputs_bucket_name")
    # No other resource is made for the uploaders.
    uses = {
        f"{rtype}.{name}"
        for rtype, named in config()["resource"].items()
        for name, body in named.items()
        if "var.search_uploaders" in json.dumps(body)
    }
    assert uses == {
        "google_storage_bucket_iam_member.search_uploaders_add_queries",
        "google_storage_bucket_iam_member.search_uploaders_read_results",
    }

    values = {
        "local.object_name_root": f"projects/_/buckets/{BUCKET}/objects/",
        "local.search_results_object_root": f"projects/_/buckets/{OUTPUTS}/objects/",
        **_defaults(),
    }
    assert (
        config()["locals"]["search_results_object_root"] == "projects/_/buckets/${local.outputs_bucket_name}/objects/"
    )
    add_condition = _render(block(add, "condition")["expression"], **values)
    read_condition = _render(config()["locals"]["search_results_read_condition"], **values)
    assert ref(block(read, "condition")["expression"]) == "local.search_results_read_condition"

    assert _allows(add_condition, name=_object(BUCKET, "search/lost-bag.jpg"))
    assert _allows(add_condition, name=_object(BUCKET, "search/desk-2/green case.txt"))
    for other in ("raw/cam1/photo.jpg", "search-results/lost-bag.jpg.json", "searches/x.jpg", "backgrounds/cam1.jpg"):
        assert not _allows(add_condition, name=_object(BUCKET, other)), other
    assert not _allows(add_condition, name=_object("another-bucket", "search/x.jpg"))
    assert not _allows(add_condition, list_prefix="search/"), "creating queries does not list them"

    assert _allows(read_condition, name=_object(OUTPUTS, "search-results/lost-bag.jpg.json"))
    assert _allows(read_condition, name=_object(OUTPUTS, "search-results/lost-bag.jpg.jpg"))
    for other in ("processed/cam1/photo.jpg-output-0001.jpg", "processed-markers/x", "search/lost-bag.jpg"):
        assert not _allows(read_condition, name=_object(OUTPUTS, other)), other
    assert _allows(read_condition, list_prefix="search-results/")
    assert _allows(read_condition, list_prefix="search-results/lost")
    assert not _allows(read_condition, list_prefix="")
    assert not _allows(read_condition, list_prefix="processed/")


@pytest.mark.parametrize(
    "member, ok",
    [
        ("group:lost-and-found@example.com", True),
        ("user:desk@example.com", True),
        ("serviceAccount:kiosk@p.iam.gserviceaccount.com", True),
        ("domain:example.com", True),
        ("allUsers", False),
        ("allAuthenticatedUsers", False),
        ("lost-and-found@example.com", False),
        ("group:", False),
        ("group:a b@example.com", False),
    ],
)
def test_search_uploaders_must_be_named_iam_members(member, ok):
    condition = block(config()["variable"]["search_uploaders"], "validation")["condition"]
    pattern = re.search(r'regex\("((?:[^"\\]|\\.)*)"', condition).group(1).encode().decode("unicode_escape")
    assert bool(re.fullmatch(pattern, member)) is ok
    assert (
        default_of("search_uploaders") == [] and config()["variable"]["search_uploaders"]["type"] == "${list(string)}"
    )


def test_the_buckets_with_search_grants_have_uniform_access():
    for name in ("images", "outputs"):
        assert resource("google_storage_bucket", name)["uniform_bucket_level_access"] is True
    existing = config()["data"]["google_storage_bucket"]["existing_images"]
    assert "self.uniform_bucket_level_access" in json.dumps(existing["lifecycle"])
    # In the single-bucket layout the results, and so the read grant, are in the images bucket.
    assert ref(config()["locals"]["outputs_bucket_name"]) == (
        "var.separate_outputs_bucket ? google_storage_bucket.outputs[0].name : local.images_bucket_name"
    )


def test_the_function_reads_queries_and_writes_results_in_both_layouts():
    local = config()["locals"]
    assert "var.search_prefix" in local["raw_read_condition"]
    assert "${var.search_results_prefix}" in local["output_prefixes"]
    # Separate layout: everything in the outputs bucket is the function's (unconditional objectUser).
    outputs_grant = resource("google_storage_bucket_iam_member", "runtime_writes_outputs_bucket")
    assert outputs_grant["role"] == "roles/storage.objectUser" and "condition" not in outputs_grant
    assert ref(outputs_grant["member"]) == "local.runtime_member"


def test_the_function_inserts_into_the_new_tables_and_reads_only_the_embeddings():
    bindings = config()["resource"]["google_bigquery_table_iam_member"]
    for table in ("embeddings", "search_matches"):
        grant = bindings[f"runtime_inserts_{table}"]
        assert ref(grant["table_id"]) == f"google_bigquery_table.{table}.table_id"
        assert ref(grant["role"]) == "google_project_iam_custom_role.row_inserter.name"
    readers = {name for name, body in bindings.items() if "row_reader" in body["role"]}
    assert readers == {"runtime_reads_embeddings"}
    assert ref(bindings["runtime_reads_embeddings"]["table_id"]) == "google_bigquery_table.embeddings.table_id"
    queries = resource("google_project_iam_member", "runtime_runs_queries")
    assert ref(queries["role"]) == "google_project_iam_custom_role.query_runner.name"
    assert ref(queries["member"]) == "local.runtime_member" and ref(queries["project"]) == "var.project_id"
    roles = config()["resource"]["google_project_iam_custom_role"]
    assert roles["query_runner"]["permissions"] == ["bigquery.jobs.create"]
    assert roles["row_reader"]["permissions"] == ["bigquery.tables.getData"]
    for name in ("query_runner", "row_reader"):
        assert "${local.role_id_prefix}_" in roles[name]["role_id"]
    # Vertex embeddings (embedContent) are prediction calls: the Gemini caller role covers them.
    assert roles["gemini_caller"]["permissions"] == ["aiplatform.endpoints.predict"]
    text = repr(config())
    assert "roles/bigquery.jobUser" not in text and "roles/bigquery.dataViewer" not in text


# --- Retention -------------------------------------------------------------------------------------------


def _search_rule(bucket: str) -> dict[str, Any]:
    rules = [
        item["lifecycle_rule"]
        for item in resource("google_storage_bucket", bucket)["dynamic"]
        if "lifecycle_rule" in item
    ]
    (rule,) = [rule for rule in rules if "search_retention_days" in rule["for_each"]]
    return rule


def test_queries_and_results_are_deleted_after_the_search_retention():
    assert default_of("search_retention_days") == 30
    images, outputs = _search_rule("images"), _search_rule("outputs")
    assert ref(images["for_each"]) == (
        "var.search_retention_days > 0 ? [var.separate_outputs_bucket ? [var.search_prefix] : "
        "[var.search_prefix, var.search_results_prefix]] : []"
    )
    assert ref(outputs["for_each"]) == "var.search_retention_days > 0 ? [[var.search_results_prefix]] : []"
    for rule in (images, outputs):
        content = block(rule, "content")
        condition = block(content, "condition")
        assert ref(condition["age"]) == "var.search_retention_days"
        assert ref(condition["matches_prefix"]) == "lifecycle_rule.value"
        assert block(content, "action")["type"] == "Delete"
    # The outputs bucket exists only in the separate layout, where the results are.
    assert ref(resource("google_storage_bucket", "outputs")["count"]) == "var.separate_outputs_bucket ? 1 : 0"


def test_outputs_tell_how_to_search():
    outputs = config()["output"]
    assert ref(outputs["embeddings_table"]["value"]) == "local.embeddings_table_id"
    assert ref(outputs["search_matches_table"]["value"]) == "local.search_matches_table_id"
    command = outputs["search_command"]["value"]
    assert "gs://${local.images_bucket_name}/${var.search_prefix}" in command
    assert "gs://${local.outputs_bucket_name}/${var.search_results_prefix}" in command
