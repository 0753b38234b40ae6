"""Model answers that are unreadable or hold no usable box (issue 14, items 3 and 5), and
redaction on every logging path, through the real function over HTTP (functions-framework,
google-cloud-storage and google-genai against the stand-ins)."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator

import pytest
from PIL import Image

from devtools.standins.gemini_server import Answer, RawReply, gzip_without_header, not_json, rejected_by_sdk
from segmentation import gemini as gemini_module
from segmentation import pipeline as pipeline_module
from segmentation.function import reset_pipeline
from segmentation.gemini import BOX_REASK_INSTRUCTION
from tests.harness import API_KEY, BUCKET, Stack, gemini_only_stack

SIZE = (640, 480)
SECRET = "SECRETVALUE0042"


@pytest.fixture
def stack(tmp_path, monkeypatch) -> Iterator[Stack]:
    with gemini_only_stack(tmp_path, monkeypatch) as running:
        yield running


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", SIZE, (90, 120, 160)).save(buffer, "JPEG")
    return buffer.getvalue()


def old_time(seconds: float) -> str:
    """An RFC 3339 upload time `seconds` ago, as a redelivered event still carries it."""
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def log_entries(capfd) -> tuple[list[dict], list[str]]:
    """Everything logged since the last call: the JSON entries, and every line that is not one."""
    out, err = capfd.readouterr()
    entries, other = [], []
    for line in (out + err).splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            other.append(line)
    return entries, other


def obj(box, label: str) -> dict:
    return {
        "box_2d": box,
        "label": label,
        "color": "black",
        "general_description": "a bag",
        "detailed_description": f"{label}, seen from above",
    }


GOOD = json.dumps([obj([100, 100, 500, 400], "suitcase"), obj([200, 500, 600, 900], "backpack")])


def assert_failed_image(stack: Stack, name: str, error_type: str) -> dict:
    """`name` has exactly one image row, failed with `error_type`, a failed marker and no outputs."""
    (row,) = stack.rows("images")
    assert (row["source_name"], row["status"], row["error_type"]) == (name, "failed", error_type)
    assert stack.rows("objects") == []
    assert stack.names("processed/") == [] and stack.names("processed-overview/") == []
    marker = stack.bucket.get_blob(f"processed-markers/{name.removeprefix('raw/')}.json")
    assert marker.metadata["status"] == "failed"
    return row


# --- item 3: answers the SDK cannot read -----------------------------------------------------------

UNREADABLE = {
    "not JSON": lambda: not_json(f"<html>bad gateway for https://proxy.example/v1?alt=json&key={SECRET}</html>"),
    "gzip without its header": lambda: gzip_without_header(GOOD),
    "gzip header, body not gzip": lambda: RawReply(
        b'{"candidates": []}', headers=(("Content-Type", "application/json"), ("Content-Encoding", "gzip"))
    ),
    "candidates as a string": lambda: rejected_by_sdk(),
    "parts as a string": lambda: rejected_by_sdk({"candidates": [{"content": {"parts": f"key={SECRET}"}}]}),
}


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_an_unreadable_answer_is_retried_then_handed_back_then_a_failed_row(stack, monkeypatch, capfd, kind):
    monkeypatch.setenv("RETRY_DEADLINE_S", "2")
    monkeypatch.setattr(gemini_module, "RETRY_BASE_DELAY_S", 0.05)
    reply = UNREADABLE[kind]()
    stack.gemini.reset(lambda request: reply)
    blob = stack.upload("raw/cam1/belt.jpg", photo(), "image/jpeg")
    log_entries(capfd)

    # The first delivery retries in-process until its deadline, then hands the event back:
    # HTTP 500, one JSON line.
    assert stack.deliver(stack.event_for(blob, timeCreated=old_time(0))).status_code == 500
    calls = len(stack.gemini.requests)
    assert calls >= 2
    entries, other = log_entries(capfd)
    assert other == [], "plain-text lines (a traceback?) beside the JSON log"
    errors = [entry for entry in entries if entry["severity"] in ("ERROR", "CRITICAL")]
    assert len(errors) == 1 and errors[0]["error_type"] == "unreadable_answer"
    assert errors[0]["object"] == "raw/cam1/belt.jpg"
    retries = [entry for entry in entries if entry["message"].startswith("Gemini generateContent failed")]
    # One retry line per retried call; the last retry may run out of time (its timeout is cut to
    # what is left) before its request reaches the stand-in.
    assert calls - 1 <= len(retries) <= calls
    assert stack.rows("images") == []
    assert stack.bucket.get_blob("processed-markers/cam1/belt.jpg.claim") is None

    # A redelivery after the first delivery's retry deadline that meets it again: a failed row.
    assert stack.deliver(stack.event_for(blob, timeCreated=old_time(60))).status_code == 200
    assert len(stack.gemini.requests) > calls
    row = assert_failed_image(stack, "raw/cam1/belt.jpg", "unreadable_answer")
    entries, other = log_entries(capfd)
    assert other == []
    (failed,) = [entry for entry in entries if entry["severity"] == "ERROR"]
    assert failed["error_type"] == "unreadable_answer"
    assert SECRET not in row["error_message"] and SECRET not in json.dumps(entries)

    # Final: a later copy is a no-op.
    calls = len(stack.gemini.requests)
    assert stack.deliver(stack.event_for(blob, timeCreated=old_time(120))).status_code == 200
    assert len(stack.gemini.requests) == calls and len(stack.rows("images")) == 1


def test_an_unreadable_answer_then_a_good_one_is_processed_in_the_same_delivery(stack, monkeypatch):
    monkeypatch.setattr(gemini_module, "RETRY_BASE_DELAY_S", 0.05)
    stack.gemini.enqueue(not_json(), gzip_without_header(GOOD), RawReply(b"[]"), Answer(GOOD))
    blob = stack.upload("raw/belt.jpg", photo(), "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert len(stack.gemini.requests) == 4
    (row,) = stack.rows("images")
    assert (row["status"], row["objects_found"]) == ("ok", 2)
    assert len(stack.names("processed/")) == 2


def test_a_base_url_the_client_cannot_use_is_a_failed_row_at_once(stack, monkeypatch):
    """Not a transport failure worth retrying, nor an unexpected one: a setting to fix."""
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "ftp://127.0.0.1:1/")
    reset_pipeline()
    blob = stack.upload("raw/belt.jpg", photo(), "image/jpeg")

    assert stack.deliver(stack.event_for(blob, timeCreated=old_time(0))).status_code == 200

    row = assert_failed_image(stack, "raw/belt.jpg", "detector_not_configured")
    assert "UnsupportedProtocol" in row["error_message"]


# --- redaction on every path that logs -----------------------------------------------------------


def test_an_unexpected_error_carrying_credentials_is_logged_redacted_with_its_stack_trace(stack, monkeypatch, capfd):
    monkeypatch.setenv("RETRY_DEADLINE_S", "5")
    stack.gemini.reset(lambda request: Answer(GOOD))

    def leaky_overview(image, detections):
        raise RuntimeError(
            f"GET https://proxy.example/v1/x?alt=json&key={SECRET} failed: "
            f"{{'x-goog-api-key': '{API_KEY}', 'Authorization': 'Bearer ya29.{SECRET}'}}"
        )

    monkeypatch.setattr(pipeline_module, "overview_jpeg", leaky_overview)
    blob = stack.upload("raw/belt.jpg", photo(), "image/jpeg")
    log_entries(capfd)

    for created, status in ((old_time(1), 500), (old_time(60), 200)):
        assert stack.deliver(stack.event_for(blob, timeCreated=created)).status_code == status
        entries, other = log_entries(capfd)
        assert other == []
        (line,) = [entry for entry in entries if entry["severity"] == "ERROR"]
        assert line["error_type"] == "unexpected_error"
        assert "leaky_overview" in line["stack_trace"] and "key=***" in line["stack_trace"]
        logged = json.dumps(entries)
        assert SECRET not in logged and API_KEY not in logged
    (row,) = stack.rows("images")
    assert row["error_type"] == "unexpected_error" and "RuntimeError" in row["error_message"]
    assert "key=***" in row["error_message"] and SECRET not in row["error_message"]


def test_a_setup_failure_carrying_a_key_is_logged_redacted(stack, monkeypatch, capfd):
    monkeypatch.setenv("GEMINI_TEMPERATURE", f"warm?key={SECRET}")
    reset_pipeline()
    blob = stack.upload("raw/belt.jpg", photo(), "image/jpeg")
    log_entries(capfd)

    assert stack.deliver(stack.event_for(blob)).status_code == 500

    entries, other = log_entries(capfd)
    assert other == []
    (line,) = [entry for entry in entries if entry["severity"] == "CRITICAL"]
    assert "GEMINI_TEMPERATURE" in line["message"] and "key=***" in line["stack_trace"]
    assert SECRET not in json.dumps(entries)


# --- item 5: answers without usable boxes ----------------------------------------------------------

NO_USABLE_BOX = (
    '[{"box_2d": [NaN, 100, 500, 400], "label": "suitcase"},'
    ' {"box_2d": [[200, 500], [600, 900]], "label": "backpack"},'
    ' {"box_2d": ["a", "b", "c", "d"], "label": "bag"}]'
)
ZERO_TO_ONE = json.dumps([obj([0.1, 0.1, 0.5, 0.4], "suitcase"), obj([0.2, 0.5, 0.6, 0.9], "backpack")])


def deliver_answered(stack: Stack, name: str, answer: str) -> dict:
    """Upload `name`, deliver its event with every model call answered `answer`; its image row."""
    stack.gemini.reset(lambda request: Answer(answer))
    blob = stack.upload(name, photo(), "image/jpeg")
    assert stack.deliver(stack.event_for(blob)).status_code == 200
    (row,) = [row for row in stack.rows("images") if row["source_name"] == name]
    return row


@pytest.mark.parametrize(
    "answer, error_type",
    [(NO_USABLE_BOX, "no_usable_boxes"), (ZERO_TO_ONE, "box_scale_0_1")],
    ids=["NaN, nested", "0-1 scale"],
)
def test_an_answer_without_usable_boxes_is_asked_again_then_fails(stack, capfd, answer, error_type):
    stack.gemini.reset(lambda request: Answer(answer))
    blob = stack.upload("raw/belt.jpg", photo(), "image/jpeg")
    log_entries(capfd)

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    first, second = stack.gemini.requests
    assert second.texts == [*first.texts, BOX_REASK_INSTRUCTION]
    row = assert_failed_image(stack, "raw/belt.jpg", error_type)
    assert "both Gemini answers were unusable" in row["error_message"]
    entries, other = log_entries(capfd)
    assert other == []
    (line,) = [entry for entry in entries if entry["severity"] == "ERROR"]
    assert line["error_type"] == error_type

    # Zero objects is still an empty belt, asked once.
    row = deliver_answered(stack, "raw/nothing.jpg", "[]")
    assert (row["status"], row["objects_found"], row["error_type"]) == ("empty", 0, None)
    assert len(stack.gemini.requests) == 1


@pytest.mark.parametrize("first", [NO_USABLE_BOX, ZERO_TO_ONE], ids=["NaN, nested", "0-1 scale"])
def test_a_good_answer_after_the_re_ask_is_recorded(stack, first):
    stack.gemini.enqueue(Answer(first), Answer(GOOD))
    blob = stack.upload("raw/belt.jpg", photo(), "image/jpeg")

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert len(stack.gemini.requests) == 2
    (row,) = stack.rows("images")
    assert (row["status"], row["objects_found"], row["error_type"]) == ("ok", 2, None)
    assert [r["label"] for r in sorted(stack.rows("objects"), key=lambda r: r["object_index"])] == [
        "suitcase",
        "backpack",
    ]
    assert len(stack.names("processed/")) == 2


def test_only_a_whole_answer_on_a_0_1_scale_is_refused_not_a_tiny_box_near_the_origin(stack):
    row = deliver_answered(stack, "raw/scaled.jpg", ZERO_TO_ONE)
    assert (row["status"], row["error_type"]) == ("failed", "box_scale_0_1")
    assert len(stack.gemini.requests) == 2

    # Gemini's boxes are integers 0-1000: [0, 0, 1, 1] is a genuinely tiny box in the corner,
    # beside a normal box or on its own, and a 0-1 box beside a 0-1000 one is no 0-1 answer.
    for name, boxes in (
        ("raw/beside.jpg", [[0, 0, 1, 1], [100, 100, 500, 400]]),
        ("raw/alone.jpg", [[0, 0, 1, 1]]),
        ("raw/mixed.jpg", [[0, 0, 0.5, 0.5], [100, 100, 500, 400]]),
    ):
        answer = json.dumps([obj(box, f"bag {i}") for i, box in enumerate(boxes)])
        row = deliver_answered(stack, name, answer)
        assert (row["status"], row["objects_found"]) == ("ok", len(boxes)), name
        assert len(stack.gemini.requests) == 1, name
    tiny = [r for r in stack.rows("objects") if r["label"] == "bag 0" and r["source_name"] != "raw/mixed.jpg"]
    assert [(r["box_x_min"], r["box_y_min"], r["box_x_max"], r["box_y_max"]) for r in tiny] == [(0, 0, 1, 1)] * 2


def test_a_5000_digit_number_costs_only_its_own_object(stack, capfd):
    objects = [json.dumps(obj([100, 100 + 200 * i, 500, 250 + 200 * i], f"bag {i + 1}")) for i in range(4)]
    objects[2] = objects[2].replace("[100, 500, 500, 650]", f"[100, {'7' * 5000}, 500, 650]")
    assert "7" * 5000 in objects[2]
    stack.gemini.reset(lambda request: Answer("[" + ", ".join(objects) + "]"))
    blob = stack.upload("raw/belt.jpg", photo(), "image/jpeg")
    log_entries(capfd)

    assert stack.deliver(stack.event_for(blob)).status_code == 200

    assert len(stack.gemini.requests) == 1
    (row,) = stack.rows("images")
    assert (row["status"], row["objects_found"], row["error_type"]) == ("ok", 3, None)
    rows = sorted(stack.rows("objects"), key=lambda r: r["object_index"])
    assert [r["label"] for r in rows] == ["bag 1", "bag 2", "bag 4"]
    assert stack.names("processed/") == [f"processed/belt.jpg-output-{i:04d}.jpg" for i in (1, 2, 3)]
    for r in rows:
        crop = Image.open(
            io.BytesIO(stack.bucket.blob(r["output_uri"].removeprefix(f"gs://{BUCKET}/")).download_as_bytes())
        )
        assert crop.size == (r["box_x_max"] - r["box_x_min"], r["box_y_max"] - r["box_y_min"])
    entries, _ = log_entries(capfd)
    (repaired,) = [entry for entry in entries if entry["message"] == "Gemini answer repaired while parsing"]
    assert any("without a valid box_2d" in note and "'bag 3'" in note for note in repaired["notes"])
