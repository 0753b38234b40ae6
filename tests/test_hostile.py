"""Hostile input and security, end to end through the real function.

Every case of `tests.hostile_corpus` is uploaded to the storage emulator (which holds exactly
the object names Cloud Storage holds), its event is POSTed to functions-framework's app over
HTTP, and the test asserts:

- the HTTP status (200; 500 only for the transient Gemini outage of the secret scan);
- exactly the expected recorded outcome: one image row with its status and error type, or no
  row and one `ignored` (INFO) / `ignored event` (WARNING) log line;
- nothing written outside the output prefixes and nothing that existed before touched (full
  bucket listing and generations, before and after);
- every log line is one JSON object (object names and model labels cannot forge log entries);
- the worker survived: a good image right after the case is processed;
- no hang: each test has a 30 s timeout (`pytest-timeout`).

One stack serves the whole module (the function keeps its process-wide pipeline between
events, as a warm Cloud Run instance does), configured with a distinctive Gemini API key that
the last test looks for in every log line, row, object and object metadata of the run.

The empty-belt gate and the offline fallback are switched off for the corpus so that every
valid image reaches the Gemini wire server, which answers the four quadrant boxes; one test
runs the valid images through the default configuration too.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import posixpath
import re
import secrets
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from google.api_core.exceptions import BadRequest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from devtools.standins.bigquery_server import FakeBigQuery
from devtools.standins.gemini_server import Answer, ErrorReply, unavailable
from segmentation.events import EventError, object_ref_from_event
from segmentation.function import reset_pipeline
from segmentation.naming import MAX_OBJECT_NAME_BYTES, OutputNames
from segmentation.sink import SqliteSink
from tests.harness import BUCKET, FINALIZED, ROOT, Stack, running_stack, use_bigquery
from tests.hostile_corpus import (
    CONTENT_CASES,
    EVENT_CASES,
    FIXED_ANSWER,
    FORGED_NAMES,
    NAME_CASES,
    SIZE,
    EventCase,
    Expect,
    ForgedObjectEvent,
    RawBody,
    UploadCase,
    quadrant_png,
)

pytestmark = pytest.mark.timeout(30)

# Made up per run, so it is in no file of the repository and nothing can match it by accident.
SECRET = "hostile-secret-" + secrets.token_hex(16)
OUTPUT_PREFIXES = ("processed/", "processed-overview/", "processed-markers/")
COLOUR_TOLERANCE = 40  # per channel, JPEG crops


# --- the shared stack ---------------------------------------------------------------------------


@dataclass
class Run:
    """The module's stack, plus everything it logged (for the secret scan)."""

    stack: Stack
    logs: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    canaries: int = 0

    def take_logs(self, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
        captured = capsys.readouterr()
        self.logs.append(captured.out + captured.err)
        return captured.out, captured.err


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Iterator[Run]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMPTY_BELT_GATE_CAMERAS", "")
        patch.setenv("OFFLINE_FALLBACK", "false")
        sqlite_path = tmp_path_factory.mktemp("hostile") / "results.sqlite"
        with running_stack(sqlite_path, patch, api_key=SECRET, gcs_names=True) as stack:
            yield Run(stack)


@pytest.fixture
def run(hostile: Run, capsys) -> Iterator[Run]:
    hostile.stack.gemini.reset(lambda request: Answer(FIXED_ANSWER))
    hostile.take_logs(capsys)
    yield hostile
    hostile.take_logs(capsys)


# --- observing one delivery ------------------------------------------------------------------------


@dataclass
class Observed:
    status_code: int
    before: dict[str, int]
    after: dict[str, int]
    images: list[dict]
    objects: list[dict]
    out: list[dict]  # stdout log entries
    err: list[str]  # stderr lines
    gemini_calls: int

    @property
    def written(self) -> set[str]:
        return {name for name, generation in self.after.items() if self.before.get(name) != generation}

    def lines(self, message_start: str) -> list[dict]:
        return [entry for entry in self.out + self.err_entries() if entry["message"].startswith(message_start)]

    def err_entries(self) -> list[dict]:
        entries = []
        for line in self.err:  # after an HTTP 500, Flask's traceback lines are among them
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "message" in entry:
                entries.append(entry)
        return entries


def row_ids(run: Run, table: str) -> set[str]:
    if not run.stack.sqlite_path.exists():
        return set()
    with contextlib.closing(sqlite3.connect(run.stack.sqlite_path)) as db:
        return {row_id for (row_id,) in db.execute(f'SELECT row_id FROM "{table}"')}


def observe(run: Run, capsys, send: Callable[[], requests.Response]) -> Observed:
    stack = run.stack
    before = stack.listing()
    image_ids, object_ids = row_ids(run, "images"), row_ids(run, "objects")
    calls = len(stack.gemini.requests)
    response = send()
    run.responses.append(response.text)
    out, err = run.take_logs(capsys)
    out_lines = [line for line in out.split("\n") if line]
    for line in out_lines:  # one JSON object per line, whatever names or labels contain
        assert isinstance(json.loads(line), dict), line
    return Observed(
        status_code=response.status_code,
        before=before,
        after=stack.listing(),
        images=[row for row in stack.rows("images") if row["row_id"] not in image_ids],
        objects=sorted(
            (row for row in stack.rows("objects") if row["row_id"] not in object_ids),
            key=lambda row: row["object_index"],
        ),
        out=[json.loads(line) for line in out_lines],
        err=[line for line in err.split("\n") if line],
        gemini_calls=len(stack.gemini.requests) - calls,
    )


def assert_confined(seen: Observed) -> None:
    """Nothing outside the output prefixes written; nothing that existed before changed or lost."""
    outside = {name for name in seen.written if not name.startswith(OUTPUT_PREFIXES)}
    assert not outside, f"written outside {OUTPUT_PREFIXES}: {outside}"
    touched = {name for name, generation in seen.before.items() if seen.after.get(name) != generation}
    assert not touched, f"objects of earlier cases changed or deleted: {touched}"
    for name in seen.written:
        assert len(name.encode()) <= MAX_OBJECT_NAME_BYTES


def assert_worker_survived(run: Run, capsys) -> None:
    """A good image right after the case is processed normally."""
    run.canaries += 1
    stack = run.stack
    stack.gemini.reset(lambda request: Answer(FIXED_ANSWER))
    name = f"raw/canary/{run.canaries}.png"
    blob = stack.upload(name, quadrant_png())
    assert stack.deliver(stack.event_for(blob)).status_code == 200
    run.take_logs(capsys)
    rows = [
        row
        for row in SqliteSink(stack.sqlite_path).rows("images", where_name_prefix=name)
        if row["source_name"] == name
    ]
    assert [(row["status"], row["objects_found"]) for row in rows] == [("ok", 4)]


def assert_outcome(run: Run, seen: Observed, expect: Expect, *, name: str, generation: int | None = None) -> None:
    assert seen.status_code == expect.http
    assert len(seen.err_entries()) == len(seen.err), f"stderr lines that are not JSON log entries: {seen.err}"
    if expect.log is not None:
        assert seen.images == [] and seen.objects == []
        assert seen.written == set(), "an event that is not ours wrote something"
        assert seen.gemini_calls == 0
        if expect.log == "ignored":
            (line,) = seen.lines("ignored: ")
            assert line["severity"] == "INFO" and line["object"] == name
        else:
            (line,) = seen.lines("ignored event: ")
            assert line["severity"] == "WARNING"
        assert expect.reason is None or expect.reason in line["message"]
        return

    (image,) = seen.images
    assert (image["status"], image["error_type"]) == (expect.status, expect.error_type), image["error_message"]
    assert image["source_name"] == name and image["source_bucket"] == BUCKET
    assert generation is None or image["source_generation"] == generation
    markers = {written for written in seen.written if written.startswith("processed-markers/")}
    assert {posixpath.splitext(m)[1] for m in markers} == {".json", ".claim"} and len(markers) == 2, (
        "one completion marker and one claim"
    )
    if expect.status == "failed":
        assert image["error_message"] and seen.objects == [] and image["objects_found"] == 0
        assert seen.written == markers, "a failed image writes only its marker and its claim"
        assert [(e["severity"], e["error_type"], e["object"]) for e in seen.lines("image failed")] == [
            ("ERROR", expect.error_type, name)
        ]
        if expect.error_type in ("image_decode_error", "image_too_large"):
            assert seen.gemini_calls == 0, "a broken image never reaches the model"
        return

    assert [(e["status"], e["object"]) for e in seen.lines("image processed")] == [(expect.status, name)]
    assert seen.gemini_calls == 1
    width, height = expect.size
    assert (image["image_width"], image["image_height"]) == (width, height)
    assert image["objects_found"] == expect.objects == len(seen.objects)
    crops = sorted(written for written in seen.written if written.startswith("processed/"))
    overviews = [written for written in seen.written if written.startswith("processed-overview/")]
    assert len(crops) == expect.objects and len(overviews) == 1
    assert image["overview_uri"] == f"gs://{BUCKET}/{overviews[0]}"
    if expect.outputs is not None:
        assert seen.written == expect.outputs
    if expect.crops_under is not None:
        assert all(crop.startswith(expect.crops_under) for crop in crops), crops
    overview = Image.open(io.BytesIO(run.stack.bucket.blob(overviews[0]).download_as_bytes()))
    assert overview.size == (width, height)
    for row, colour in zip(seen.objects, expect.colours, strict=False):
        assert 0 <= row["box_x_min"] < row["box_x_max"] <= width and 0 <= row["box_y_min"] < row["box_y_max"] <= height
        crop_name = row["output_uri"].removeprefix(f"gs://{BUCKET}/")
        assert crop_name in crops
        crop = Image.open(io.BytesIO(run.stack.bucket.blob(crop_name).download_as_bytes()))
        assert crop.size == (row["box_x_max"] - row["box_x_min"], row["box_y_max"] - row["box_y_min"])
        centre = crop.convert("RGB").getpixel((crop.width // 2, crop.height // 2))
        assert all(abs(a - b) <= COLOUR_TOLERANCE for a, b in zip(centre, colour, strict=False)), (
            row["label"],
            centre,
            colour,
        )


# --- the corpus: uploads ----------------------------------------------------------------------------


def upload_and_deliver(run: Run, capsys, case: UploadCase) -> tuple[Observed, int]:
    stack = run.stack
    blob = stack.upload(case.name, case.data, case.content_type)
    return observe(run, capsys, lambda: stack.deliver(stack.event_for(blob, **case.event))), blob.generation


@pytest.mark.parametrize("case", CONTENT_CASES, ids=lambda case: case.id)
def test_hostile_content(run, capsys, case: UploadCase):
    seen, generation = upload_and_deliver(run, capsys, case)

    assert_outcome(run, seen, case.expect, name=case.name, generation=generation)
    assert_confined(seen)
    assert_worker_survived(run, capsys)


@pytest.mark.parametrize("case", NAME_CASES, ids=lambda case: case.id)
def test_hostile_names(run, capsys, case: UploadCase):
    seen, generation = upload_and_deliver(run, capsys, case)

    assert_outcome(run, seen, case.expect, name=case.name, generation=generation)
    assert_confined(seen)
    assert_worker_survived(run, capsys)


@pytest.mark.parametrize("case", FORGED_NAMES, ids=lambda case: case.id)
def test_names_cloud_storage_refuses_can_only_be_forged_and_are_refused(run, capsys, case: ForgedObjectEvent):
    with pytest.raises(BadRequest):  # as Cloud Storage itself answers
        run.stack.upload(case.name, quadrant_png())
    data = {"bucket": BUCKET, "name": case.name, "generation": "1", "size": "151", "contentType": "image/png"}
    event = run.stack.event_for(run.stack.bucket.blob("raw/x.png"), **data)

    seen = observe(run, capsys, lambda: run.stack.deliver(event))

    assert_outcome(run, seen, case.expect, name=case.name)
    assert_confined(seen)
    assert_worker_survived(run, capsys)


# --- the corpus: events --------------------------------------------------------------------------------


def event_request(case: EventCase, mode: str) -> tuple[dict[str, str], bytes]:
    """The HTTP request carrying `case` as a CloudEvent, in binary or structured content mode."""
    attributes = {
        "specversion": "1.0",
        "id": f"hostile-{case.id}",
        "type": case.type,
        "source": f"//storage.googleapis.com/projects/_/buckets/{BUCKET}",
    }
    data = case.data
    if mode == "binary":
        headers = {f"ce-{key}": value for key, value in attributes.items()}
        headers["content-type"] = "application/json"
        return headers, data.body if isinstance(data, RawBody) else json.dumps(data).encode()
    envelope: dict[str, Any] = {**attributes, "datacontenttype": "application/json"}
    if isinstance(data, RawBody):
        envelope["data_base64"] = base64.b64encode(data.body).decode()
    else:
        envelope["data"] = data
    return {"content-type": "application/cloudevents+json"}, json.dumps(envelope).encode()


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("case", EVENT_CASES, ids=lambda case: case.id)
def test_wrong_events_are_acknowledged_with_a_warning(run, capsys, case: EventCase, mode: str):
    headers, body = event_request(case, mode)

    seen = observe(run, capsys, lambda: run.stack.post(headers, body))

    assert_outcome(run, seen, case.expect, name="")
    assert_confined(seen)
    assert_worker_survived(run, capsys)


NOT_CLOUDEVENTS = {
    "json-without-cloudevent-headers": (
        {"content-type": "application/json"},
        json.dumps({"bucket": BUCKET, "name": "raw/a.png"}).encode(),
    ),
    "binary-without-type": (
        {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "//storage", "content-type": "application/json"},
        b"{}",
    ),
    "structured-envelope-not-json": ({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0", '),
}


@pytest.mark.parametrize("request_id", NOT_CLOUDEVENTS)
def test_requests_that_are_no_cloudevent_are_refused_by_the_framework(run, capsys, request_id):
    headers, body = NOT_CLOUDEVENTS[request_id]

    seen = observe(run, capsys, lambda: run.stack.post(headers, body))

    # functions-framework answers 400 before our code runs (Eventarc never sends these).
    assert seen.status_code == 400
    assert seen.images == [] and seen.out == [] and seen.gemini_calls == 0
    assert_confined(seen)
    assert seen.written == set()
    assert_worker_survived(run, capsys)


# --- property: events and names -----------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
EVENT_DATA = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {}, optional={key: JSON_VALUES | st.text() for key in ("bucket", "name", "generation", "size", "contentType")}
    ),
)


@settings(max_examples=300, deadline=None)
@given(data=EVENT_DATA, event_type=st.sampled_from([FINALIZED, "", None, "google.cloud.storage.object.v1.deleted"]))
def test_any_event_data_gives_an_object_ref_or_an_event_error(data, event_type):
    try:
        ref = object_ref_from_event({"type": event_type}, data)
    except EventError:
        return
    assert re.fullmatch(r"[a-z0-9._-]+", ref.bucket)
    assert 0 < len(ref.name.encode()) <= MAX_OBJECT_NAME_BYTES and "\n" not in ref.name and "\r" not in ref.name
    assert ref.generation is None or ref.generation >= 0
    assert ref.size is None or ref.size >= 0


PREFIXES = dict(
    source_prefix="raw/",
    crops_prefix="processed/",
    overview_prefix="processed-overview/",
    markers_prefix="processed-markers/",
)
NAME_TAILS = st.lists(
    st.sampled_from(["a", "b", ".", "/", "..", "~", " ", "\u00e9", "-output-0001", ".png"]), max_size=8
).map("".join)


@settings(max_examples=300, deadline=None)
@given(first=NAME_TAILS, second=NAME_TAILS)
def test_different_source_objects_never_share_a_marker_or_crops(first, second):
    if first == second:
        return
    a, b = (OutputNames.for_object("raw/" + tail, **PREFIXES) for tail in (first, second))
    assert a.marker != b.marker
    # Sharing crops is documented only for the same stem with another extension (a.jpg, a.png).
    if a.crops_glob_prefix == b.crops_glob_prefix:
        assert posixpath.splitext(first)[0] == posixpath.splitext(second)[0]


# --- the default configuration --------------------------------------------------------------------------

ODD_IMAGES = [case for case in CONTENT_CASES if case.expect.status == "ok"]


def test_valid_odd_images_survive_the_default_gate_and_fallback(run, capsys, monkeypatch):
    """The empty-belt gate switched on for the camera, which has a reference (a plain grey
    frame of another shape), and the production default for the fallback (off): every valid
    image of odd size, mode or depth goes through the gate and is recorded ok or empty."""
    monkeypatch.setenv("EMPTY_BELT_GATE_CAMERAS", "hostile")
    monkeypatch.delenv("OFFLINE_FALLBACK")
    reference = io.BytesIO()
    Image.new("RGB", (640, 360), (60, 60, 62)).save(reference, "JPEG")
    run.stack.upload("backgrounds/hostile.jpg", reference.getvalue(), "image/jpeg")
    reset_pipeline()
    try:
        for case in ODD_IMAGES:
            blob = run.stack.upload(case.name, case.data, case.content_type)  # a newer generation
            seen = observe(run, capsys, lambda: run.stack.deliver(run.stack.event_for(blob)))  # noqa: B023
            assert seen.status_code == 200, case.id
            (image,) = seen.images
            assert image["status"] in ("ok", "empty"), (case.id, image["error_message"])
            assert all(name.startswith(OUTPUT_PREFIXES) for name in seen.written)
            deleted = set(seen.before) - set(seen.after)  # its own older crops, when it finds fewer now
            assert all(name.startswith("processed/") for name in deleted), deleted
    finally:
        monkeypatch.undo()
        reset_pipeline()
    assert_worker_survived(run, capsys)


# --- security: model output is data ----------------------------------------------------------------------

HOSTILE_TEXT = [
    "'); DROP TABLE objects;--",
    "<script>alert(1)</script><img src=x onerror=alert(2)>",
    "{0} {label!r} %s %(x)s %n ${jndi:ldap://x/a}",
    "a\x00b\x07c\x1b[31mred\x1b[0m\u202egnp.exe\u200b\x7f\x9b",
    'x"}\n{"severity": "CRITICAL", "message": "forged log entry"}',
    "0123456789abcdef" * 640,  # 10 kB
]
HOSTILE_BOXES = [
    [0, 0, 500, 500],
    [0, 500, 500, 1000],
    [500, 0, 1000, 500],
    [500, 500, 1000, 1000],
    [100, 100, 400, 400],
    [600, 600, 900, 900],
]
COLUMNS = ("label", "item_color", "item_gen_desc", "item_det_desc")


def hostile_answer() -> tuple[str, list[tuple[str, ...]]]:
    """Six objects; every hostile string appears once in each text column."""
    n = len(HOSTILE_TEXT)
    expected = [tuple(HOSTILE_TEXT[(i + k) % n] for k in range(4)) for i in range(n)]
    answer = [
        {"box_2d": box, "label": a, "color": b, "general_description": c, "detailed_description": d}
        for box, (a, b, c, d) in zip(HOSTILE_BOXES, expected, strict=False)
    ]
    return json.dumps(answer), expected


def test_model_text_is_stored_verbatim_as_data_in_sqlite(run, capsys):
    text, expected = hostile_answer()
    run.stack.gemini.reset(lambda request: Answer(text))
    blob = run.stack.upload("raw/security/labels.png", quadrant_png())

    seen = observe(run, capsys, lambda: run.stack.deliver(run.stack.event_for(blob)))

    assert seen.status_code == 200
    assert [(row["status"], row["objects_found"]) for row in seen.images] == [("ok", len(expected))]
    assert [tuple(row[column] for column in COLUMNS) for row in seen.objects] == expected
    with sqlite3.connect(run.stack.sqlite_path) as db:  # nothing was executed: both tables stand
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"objects", "images"} <= tables
        assert db.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == len(run.stack.rows("objects"))
    (overview_name,) = [name for name in seen.written if name.startswith("processed-overview/")]
    assert Image.open(io.BytesIO(run.stack.bucket.blob(overview_name).download_as_bytes())).size == SIZE
    assert_confined(seen)
    assert_worker_survived(run, capsys)


def test_model_text_reaches_bigquery_as_json_values(run, capsys, monkeypatch):
    text, expected = hostile_answer()
    with FakeBigQuery() as bigquery:
        use_bigquery(monkeypatch, bigquery.url)
        try:
            run.stack.gemini.reset(lambda request: Answer(text))
            blob = run.stack.upload("raw/security/labels-bq.png", quadrant_png())
            seen = observe(run, capsys, lambda: run.stack.deliver(run.stack.event_for(blob)))
        finally:
            monkeypatch.undo()
            reset_pipeline()
        assert seen.status_code == 200 and seen.images == []  # rows went to BigQuery, not SQLite
        objects = sorted(
            (row["json"] for row in bigquery.rows("test-project.conveyor.objects")), key=lambda row: row["object_index"]
        )
        assert [tuple(row[column] for column in COLUMNS) for row in objects] == expected
        (image,) = [row["json"] for row in bigquery.rows("test-project.conveyor.images")]
        assert (image["status"], image["objects_found"]) == ("ok", len(expected))
        # insertAll carries them as JSON string values (no SQL text is ever built).
        bodies = bigquery.request_bodies()
        assert all(
            set(body) <= {"rows", "skipInvalidRows", "ignoreUnknownValues", "kind", "templateSuffix", "traceId"}
            for body in bodies
        )
        sent = [row["json"] for body in bodies for row in body["rows"] if "label" in row["json"]]
        assert sorted(tuple(row[column] for column in COLUMNS) for row in sent) == sorted(expected)
    assert_confined(seen)
    assert_worker_survived(run, capsys)


# --- security: no credentials in the repository ------------------------------------------------------------

# Patterns written so that this file does not match them itself.
GOOGLE_API_KEY = re.compile(rb"AIza[0-9A-Za-z_\-]{35}")
PRIVATE_KEY_BLOCK = re.compile(rb"-{5}BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-{5}")
SERVICE_ACCOUNT_KEY = re.compile(rb'"private_key"\s*:\s*"[^"]')


def repository_files() -> list[str]:
    """Every file git tracks, plus new files not ignored (they are about to be committed)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({path for path in listed.decode().split("\0") if path})


def test_no_credentials_in_the_repository():
    files = repository_files()
    assert "tests/test_hostile.py" in files and len(files) > 20
    found = []
    for path in files:
        full = ROOT / path
        if not full.is_file():
            continue  # deleted in the working tree
        content = full.read_bytes()
        for pattern in (GOOGLE_API_KEY, PRIVATE_KEY_BLOCK, SERVICE_ACCOUNT_KEY):
            for match in pattern.finditer(content):
                found.append((path, pattern.pattern.decode()[:20], match.start()))
    assert found == []


# --- security: the API key never leaks (last: it scans the whole module's run) -------------------------------


def echo(code: int, status: str, details: tuple[dict, ...] = ()) -> ErrorReply:
    return ErrorReply(code, status, f"{status} from a server that reflects the request.", details, echo_headers=True)


RETRY_SOON = ({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.1s"},)


def test_the_api_key_never_reaches_logs_rows_objects_or_metadata(run, capsys, monkeypatch):
    stack = run.stack
    try:
        # 429 and 500 answers that echo the request headers (the key among them), then an answer.
        stack.gemini.enqueue(echo(429, "RESOURCE_EXHAUSTED", RETRY_SOON), echo(500, "INTERNAL"))
        blob = stack.upload("raw/security/retried.png", quadrant_png())
        seen = observe(run, capsys, lambda: stack.deliver(stack.event_for(blob)))
        assert seen.status_code == 200 and [row["status"] for row in seen.images] == ["ok"]
        assert seen.gemini_calls == 3

        # A refusal that echoes the headers: recorded as failed, the message redacted.
        stack.gemini.reset(lambda request: echo(400, "INVALID_ARGUMENT"))
        blob = stack.upload("raw/security/refused.png", quadrant_png())
        seen = observe(run, capsys, lambda: stack.deliver(stack.event_for(blob)))
        assert seen.status_code == 200
        (image,) = seen.images
        assert image["error_type"] == "model_request_error" and "x-goog-api-key" in image["error_message"]

        # Transient failures past the deadline: HTTP 500 (Eventarc redelivers), then recovery.
        # (Not an echoing server here: that key would reach stderr; see the report / README.)
        monkeypatch.setenv("RETRY_DEADLINE_S", "2")
        reset_pipeline()
        stack.gemini.reset(lambda request: unavailable())
        blob = stack.upload("raw/security/outage.png", quadrant_png())
        event = stack.event_for(blob)
        seen = observe(run, capsys, lambda: stack.deliver(event))
        assert seen.status_code == 500 and seen.images == []
        assert_confined(seen)
        stack.gemini.reset(lambda request: Answer(FIXED_ANSWER))
        seen = observe(run, capsys, lambda: stack.deliver(event))
        assert seen.status_code == 200 and [row["status"] for row in seen.images] == ["ok"]
    finally:
        monkeypatch.undo()
        reset_pipeline()

    assert stack.gemini.requests, "the fake saw requests carrying the key"
    logs = "".join(run.logs)
    assert "Request headers" in logs  # the echoes did come back through the function
    assert SECRET not in logs
    assert not any(SECRET in text for text in run.responses)
    assert SECRET not in json.dumps(stack.rows("objects") + stack.rows("images"), ensure_ascii=False)
    assert SECRET.encode() not in stack.sqlite_path.read_bytes()
    for listed in stack.client.list_blobs(BUCKET):
        resource = json.dumps(listed._properties, ensure_ascii=False)  # name, content type, custom metadata...
        assert SECRET not in resource, listed.name
        # (by name: the emulator's mediaLink mangles names holding "%2e")
        assert SECRET.encode() not in stack.bucket.blob(listed.name).download_as_bytes(), listed.name
