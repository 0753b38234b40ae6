"""Shared fixtures and the test tiers.

Tiers: every test is in the fast tier (`make check`) unless `pytest_collection_modifyitems` below
marks it `emulator` (an HTTP stand-in or a functions-framework process), `load`, `terraform`
(checkov, the archive's clean virtualenv or another subprocess), `freshclone` or `slow` (> 2 s).
`make test` and CI run every tier. A fast-tier test that starts a server or a subprocess fails
with a message saying how to mark it, so the fast tier stays free of both.

Fixtures: the Gemini wire stand-in with both SDK base URLs pointing at it (`server`, `fake`), a
small model input, and fresh Cloud Storage / BigQuery stand-ins (`storage_emulator`, `fake_bigquery`).
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
from collections.abc import Iterator

import pytest
from PIL import Image

from devtools.standins.bigquery_server import FakeBigQuery
from devtools.standins.gemini_server import Answer, FakeGeminiServer
from devtools.standins.storage_emulator import StorageEmulator, running_storage_emulator
from segmentation import gemini
from segmentation.images import ModelInput

TIERS = ("emulator", "load", "terraform", "freshclone", "slow")

# Files whose every test talks to a stand-in server or runs the function in a process of its own.
FILE_MARKS: dict[str, tuple[str, ...]] = {
    "test_bench.py": ("emulator", "slow"),
    "test_bench_search.py": ("emulator", "slow"),
    "test_delivery_integrity.py": ("emulator",),
    "test_end_to_end.py": ("emulator",),
    "test_fake_servers.py": ("emulator",),
    "test_hostile.py": ("emulator",),
    "test_image_limits.py": ("emulator",),
    "test_load.py": ("load", "emulator"),
    "test_local.py": ("emulator",),
    "test_local_generations.py": ("emulator",),
    "test_model_answers.py": ("emulator",),
    "test_replay.py": ("emulator",),
    "test_search_function.py": ("emulator",),
    "test_storage.py": ("emulator",),
    "test_unsupported_scene.py": ("emulator",),
    "gemini_server.py": ("emulator",),  # its doctest starts the server
}

# Fixtures that start a stand-in; a test using one, directly or through another fixture, is `emulator`.
EMULATOR_FIXTURES = {"server", "fake", "storage_emulator", "fake_bigquery", "bq_sink", "stack"}
# Fixtures that take seconds to build (the held-out scenes are rendered and detected once per module).
SLOW_FIXTURES = {"heldout_scenes", "heldout_scores"}

# Tests in otherwise fast files, by name prefix: they start a server or process in their body, or are slow.
TEST_MARKS: dict[str, dict[str, tuple[str, ...]]] = {
    "test_gemini.py": {
        "test_api_key_backend_calls_the_developer_api_path": ("emulator",),
        "test_a_refused_connection_is_transient": ("emulator",),
    },
    "test_models.py": {
        "test_every_listed_model_answers_with_the_default_settings": ("emulator",),
        "test_through_the_function_a_retired_model_warns_once": ("emulator",),
    },
    "test_outputs_bucket.py": {
        "test_outputs_marker_and_claim_go_to_the_outputs_bucket": ("emulator",),
        "test_a_new_generation_replaces_its_outputs": ("emulator",),
        "test_events_from_the_outputs_bucket_are_ignored": ("emulator",),
        "test_ignored_invocations_per_image": ("emulator",),
        "test_local_stack_runs_with_a_separate_outputs_bucket": ("emulator",),
    },
    "test_sessions.py": {
        "test_the_storage_client_": ("emulator",),
        "test_the_bigquery_client_": ("emulator",),
    },
    "test_sink.py": {
        "test_empty_rows_make_no_call": ("emulator",),
        "test_unknown_table_on_the_server_is_permanent": ("emulator",),
        "test_rejected_rows_are_permanent": ("emulator",),
        "test_row_errors_": ("emulator",),
        "test_schema_validation_runs_before_the_network": ("emulator",),
        "test_retry_call_recovers_and_rows_land_once": ("emulator",),
        "test_connection_refused_is_transient": ("emulator",),
        "test_sqlite_concurrent_processes_lose_nothing": ("slow",),  # forks processes
        "test_sqlite_round_trips_any_valid_row": ("slow",),  # hypothesis, ~2 s
    },
    "test_terraform.py": {
        "test_checkov_": ("terraform",),
        "test_function_imports_from_the_archive_in_a_clean_interpreter": ("terraform",),
        "test_archive_holds_main_requirements": ("terraform",),  # imports main in a subprocess
        "test_the_trigger_subscription_gets_the_dead_letter_policy": ("terraform",),  # runs bash
    },
    "test_terraform_security.py": {
        "test_runtime_roles_hold_exactly_the_permissions": ("emulator",),
    },
    "test_turns.py": {
        "test_events_whose_answers_come_back_together": ("emulator",),
    },
    "test_readme.py": {
        "test_the_first_command_runs_the_whole_job_offline_in_a_fresh_clone": ("freshclone",),
    },
    "test_offline.py": {
        "test_heldout_mask_ap_floors": ("slow",),
        "test_gate_never_skips_frames_with_items": ("slow",),
        "test_gate_skips_most_empty_frames": ("slow",),
        "test_gate_sees_a_single_item_of_any_kind": ("slow",),
        "test_background_reference_on_a_carousel_scene": ("slow",),
        "test_detect_maps_model_input_back_to_the_original_size": ("slow",),
        "test_generator_is_deterministic_and_splits_differ": ("slow",),
    },
    "test_images.py": {
        "test_model_input_resampling_is_as_sharp_as_a_fair_lanczos": ("slow",),
    },
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        file = item.path.name
        name = getattr(item, "originalname", None) or item.name
        marks = set(FILE_MARKS.get(file, ()))
        fixtures = set(getattr(item, "fixturenames", ()))
        if EMULATOR_FIXTURES & fixtures:
            marks.add("emulator")
        if SLOW_FIXTURES & fixtures:
            marks.add("slow")
        for prefix, tier in TEST_MARKS.get(file, {}).items():
            if name.startswith(prefix):
                marks.update(tier)
        for mark in sorted(marks):
            item.add_marker(mark)


# --- The fast tier stays free of servers and subprocesses --------------------------------------------------

_started: list[str] = []
_bind = socket.socket.bind
_popen_init = subprocess.Popen.__init__


def _recording_bind(self: socket.socket, address: object) -> None:
    _started.append(f"a socket bound to {address!r}")
    _bind(self, address)


def _recording_popen_init(self: subprocess.Popen[bytes], args: object, *rest: object, **kwargs: object) -> None:
    _started.append(f"a subprocess {args!r}")
    _popen_init(self, args, *rest, **kwargs)  # type: ignore[arg-type]


socket.socket.bind = _recording_bind  # type: ignore[method-assign]
subprocess.Popen.__init__ = _recording_popen_init  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _fast_tier_starts_nothing(request: pytest.FixtureRequest) -> Iterator[None]:
    _started.clear()
    yield
    fast = not any(request.node.get_closest_marker(tier) for tier in TIERS)
    if fast and _started:
        pytest.fail(
            f"in the fast tier but started {_started[0]}: "
            "mark it in tests/conftest.py (FILE_MARKS, EMULATOR_FIXTURES or TEST_MARKS)",
            pytrace=False,
        )


# A two-object answer, the stand-in's default in `fake`.
TWO_BAGS = json.dumps(
    [
        {
            "box_2d": [100, 100, 400, 300],
            "label": "suitcase",
            "color": "black",
            "general_description": "A hard-shell suitcase.",
            "detailed_description": "Four wheels.",
        },
        {
            "box_2d": [500, 600, 900, 950],
            "label": "backpack",
            "color": "red",
            "general_description": "A backpack.",
            "detailed_description": "Two straps.",
        },
    ]
)

# Environment variables google-genai reads; cleared so only what a test sets counts.
SDK_ENV = (
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_USE_ENTERPRISE",
    "GOOGLE_GENAI_API_VERSION",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_VERTEX_BASE_URL",
)


@pytest.fixture(scope="module")
def server():
    with FakeGeminiServer() as fake:
        yield fake


@pytest.fixture
def fake(server, monkeypatch):
    """The shared fake, its script and record reset, with both base URLs pointing at it."""
    monkeypatch.setattr(gemini, "RETRY_BASE_DELAY_S", 0.05)  # keep backoff waits short
    for name in SDK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
    monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", server.base_url)
    server.reset(lambda request: Answer(TWO_BAGS))
    yield server
    server.reset()


@pytest.fixture(scope="module")
def model_input() -> ModelInput:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return ModelInput(data=buffer.getvalue(), mime_type="image/jpeg", width=64, height=48)


@pytest.fixture
def storage_emulator() -> Iterator[StorageEmulator]:
    """A fresh in-process Cloud Storage emulator per test ("exact" generations; starting one takes ~1 ms)."""
    with running_storage_emulator() as emulator:
        yield emulator


@pytest.fixture
def fake_bigquery() -> Iterator[FakeBigQuery]:
    """A fresh, running BigQuery insertAll stand-in per test."""
    with FakeBigQuery() as bigquery:
        yield bigquery
