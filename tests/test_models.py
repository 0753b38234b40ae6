"""The model capability table: every listed model works with the defaults through the real
google-genai client against the Gemini wire stand-in, which refuses what the service refuses;
start-up warnings; retired-model rows through the real function; 3.6+ answer shapes; Terraform."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest
import requests
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2.credentials import Credentials

from devtools.standins.gemini_server import Answer, FakeGeminiServer, model_not_found
from segmentation.config import Config
from segmentation.errors import ModelRequestError, ModelRetiredError
from segmentation.gemini import GeminiDetector
from segmentation.images import ModelInput
from segmentation.models import capabilities
from segmentation.parse import parse_response
from tests.conftest import TWO_BAGS
from tests.harness import gemini_only_stack
from tests.test_terraform import block, resource

API_KEY = "gemini-test-key-that-must-never-leak-0123456789"
IMAGE_SIZE = (620, 620)
TODAY = dt.date(2026, 12, 5)
LISTED_MODELS = ("gemini-3.5-flash", "gemini-3.6-flash", "gemini-3.7-flash", "gemini-3.8-flash", "gemini-4-argon")


def config(backend: str, **env: str) -> Config:
    if backend == "api-key":
        return Config.from_env({"GEMINI_API_KEY": API_KEY, **env})
    return Config.from_env({"GOOGLE_CLOUD_PROJECT": "test-project", **env})


def detector(backend: str, today: dt.date = TODAY, **env: str) -> GeminiDetector:
    return GeminiDetector(config(backend, **env), credentials=Credentials(token="test-token"), today=lambda: today)


def detect(detector: GeminiDetector, model_input: ModelInput):
    try:
        return detector.detect(model_input, IMAGE_SIZE, deadline=time.monotonic() + 10)
    finally:
        detector.close()


def warnings(capsys) -> list[dict]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return [line for line in lines if line["severity"] == "WARNING"]


# -- every listed model with the defaults ----------------------------------------------------


@pytest.mark.parametrize("backend", ["api-key", "vertex"])
@pytest.mark.parametrize("model", LISTED_MODELS)
def test_every_listed_model_answers_with_the_default_settings(fake, model_input, capsys, backend, model):
    result = detect(detector(backend, GEMINI_MODEL=model), model_input)

    assert [d.label for d in result.detections] == ["suitcase", "backpack"]
    [request] = fake.requests
    assert request.api == ("gemini" if backend == "api-key" else "vertex")
    if backend == "vertex":
        assert request.location == "global"  # the default location serves every listed model
    generation = request.generation_config
    level = generation["thinkingConfig"]["thinkingLevel"]
    assert level == ("LOW" if model in ("gemini-3.7-flash", "gemini-3.8-flash", "gemini-4-argon") else "MINIMAL")
    assert "thinkingBudget" not in generation["thinkingConfig"] and "temperature" not in generation
    assert request.image_part["mediaResolution"] == {"level": "MEDIA_RESOLUTION_HIGH"}
    assert warnings(capsys) == []  # nothing to warn about with the defaults


@pytest.mark.parametrize("model", ["gemini-3.6-flash", "gemini-3.8-flash", "gemini-4-argon"])
def test_models_that_ignore_temperature_never_get_it_and_the_setting_is_warned_about(fake, model_input, capsys, model):
    detect(detector("vertex", GEMINI_MODEL=model, GEMINI_TEMPERATURE="0.5"), model_input)

    assert "temperature" not in fake.requests[0].generation_config
    [warning] = warnings(capsys)
    assert "GEMINI_TEMPERATURE=0.5 is not sent" in warning["message"]


def test_gemini_3_5_flash_on_the_developer_api_gets_the_request_of_3_6_which_serves_it(fake, model_input):
    detect(detector("api-key", GEMINI_TEMPERATURE="0.5"), model_input)
    detect(detector("vertex", GEMINI_TEMPERATURE="0.5"), model_input)

    api_key, vertex = fake.requests
    assert "temperature" not in api_key.generation_config
    assert vertex.generation_config["temperature"] == 0.5
    assert capabilities("gemini-3.5-flash", "api-key").family == "gemini-3.6"


@pytest.mark.parametrize(
    ("configured", "expected"), [("minimal", "LOW"), ("low", "LOW"), ("medium", "MEDIUM"), ("high", "HIGH"), ("", None)]
)
def test_the_nearest_accepted_thinking_level_is_sent(fake, model_input, configured, expected):
    detect(detector("vertex", GEMINI_MODEL="gemini-3.8-flash", GEMINI_THINKING_LEVEL=configured), model_input)

    thinking = fake.requests[0].generation_config.get("thinkingConfig")
    assert (thinking or {}).get("thinkingLevel") == expected


@pytest.mark.parametrize("model", ["gemma-3-27b-it", "gemini-5-nova", "gemini-3-flash-preview"])
def test_an_unknown_model_gets_the_most_conservative_request_and_one_warning(fake, model_input, capsys, model):
    detect(detector("api-key", GEMINI_MODEL=model, GEMINI_TEMPERATURE="0.7"), model_input)

    generation = fake.requests[0].generation_config
    assert "thinkingConfig" not in generation and "temperature" not in generation
    [warning] = warnings(capsys)
    assert f"GEMINI_MODEL={model} is not in the model table" in warning["message"]
    assert "set GEMINI_MODEL=gemini-3.5-flash" in warning["message"]


# -- locations -------------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["eu", "us", "global"])
def test_gemini_3_8_runs_in_global_and_the_multi_regions(fake, model_input, capsys, location):
    detect(detector("vertex", GEMINI_MODEL="gemini-3.8-flash", GOOGLE_CLOUD_LOCATION=location), model_input)

    assert fake.requests[0].location == location
    assert warnings(capsys) == []


def test_gemini_3_5_runs_in_a_single_region(fake, model_input, capsys):
    detect(detector("vertex", GOOGLE_CLOUD_LOCATION="europe-west4"), model_input)

    assert fake.requests[0].location == "europe-west4"
    assert warnings(capsys) == []


def test_a_single_region_for_a_3_6_model_warns_at_start_up_and_each_image_error_names_the_fix(
    fake, model_input, capsys
):
    built = detector("vertex", GEMINI_MODEL="gemini-3.8-flash", GOOGLE_CLOUD_LOCATION="europe-west4")
    [warning] = warnings(capsys)
    assert "GOOGLE_CLOUD_LOCATION=europe-west4 does not serve GEMINI_MODEL=gemini-3.8-flash" in warning["message"]
    assert "global, eu or us" in warning["message"]

    with pytest.raises(ModelRequestError) as raised:
        detect(built, model_input)

    assert type(raised.value) is ModelRequestError
    assert "set GOOGLE_CLOUD_LOCATION to one of those" in str(raised.value)
    assert "HTTP 400 INVALID_ARGUMENT" in str(raised.value)
    assert len(fake.requests) == 1  # a refusal is permanent: not retried


# -- the stand-in refuses what the service refuses ----------------------------------------------


def _client(fake: FakeGeminiServer, vertex: bool, location: str = "global") -> genai.Client:
    options = types.HttpOptions(base_url=fake.base_url, retry_options=types.HttpRetryOptions(attempts=1))
    if vertex:
        return genai.Client(
            vertexai=True, project="p", location=location, credentials=Credentials(token="t"), http_options=options
        )
    return genai.Client(api_key=API_KEY, http_options=options)


@pytest.mark.parametrize("vertex", [False, True])
@pytest.mark.parametrize("model", ["gemini-3.7-flash", "gemini-3.8-flash"])
def test_the_stand_in_refuses_minimal_thinking_on_3_7_and_3_8(fake, vertex, model):
    client = _client(fake, vertex)
    minimal = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel.MINIMAL)
    )

    with pytest.raises(genai_errors.ClientError) as raised:
        client.models.generate_content(model=model, contents="hi", config=minimal)

    assert raised.value.code == 400 and raised.value.status == "INVALID_ARGUMENT"
    assert "MINIMAL is not supported" in raised.value.message
    low = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW))
    assert client.models.generate_content(model=model, contents="hi", config=low).text == TWO_BAGS


@pytest.mark.parametrize("model", ["gemini-3.6-flash", "gemini-3.8-flash", "gemini-4-argon"])
def test_the_stand_in_refuses_a_single_region_for_3_6_and_later(fake, model):
    regional, multi_region = _client(fake, True, "us-central1"), _client(fake, True, "us")
    with pytest.raises(genai_errors.ClientError) as raised:
        regional.models.generate_content(model=model, contents="hi")

    assert raised.value.code == 400 and raised.value.status == "INVALID_ARGUMENT"
    assert multi_region.models.generate_content(model=model, contents="hi").text == TWO_BAGS
    assert regional.models.generate_content(model="gemini-3.5-flash", contents="hi").text == TWO_BAGS


def test_the_stand_in_refusal_has_google_error_shape(fake):
    model = "publishers/google/models/gemini-3.8-flash"
    url = f"{fake.base_url}v1beta1/projects/p/locations/europe-west1/{model}:generateContent"
    answer = requests.post(url, json={"contents": []}, headers={"Authorization": "Bearer t"}, timeout=10)

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "status", "details"}
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"


# -- retirement -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (dt.date(2026, 8, 1), None),  # 80 days before: nothing yet
        (dt.date(2026, 9, 1), "retires on 2026-10-20 (in 49 days)"),
        (dt.date(2026, 10, 20), "was retired on 2026-10-20"),
        (TODAY, "was retired on 2026-10-20"),
    ],
)
def test_start_up_warns_once_from_60_days_before_retirement(fake, capsys, today, expected):
    detector("vertex", today, GEMINI_MODEL="gemini-2.5-flash").close()

    found = warnings(capsys)
    if expected is None:
        assert found == []
    else:
        [warning] = found
        assert expected in warning["message"] and "set GEMINI_MODEL=gemini-3.5-flash" in warning["message"]


def test_a_retired_model_refused_by_the_service_is_a_model_retired_error(fake, model_input):
    fake.enqueue(model_not_found("gemini-2.5-flash"))

    with pytest.raises(ModelRetiredError) as raised:
        detect(detector("vertex", GEMINI_MODEL="gemini-2.5-flash"), model_input)

    assert raised.value.error_type == "model_retired"
    assert "retired on 2026-10-20" in str(raised.value) and "set GEMINI_MODEL=gemini-3.5-flash" in str(raised.value)


def test_through_the_function_a_retired_model_warns_once_and_rows_say_model_retired(tmp_path, monkeypatch, capsys):
    from tests.test_end_to_end import cupcakes

    monkeypatch.setenv("GEMINI_MODEL", "gemini-2.5-flash")
    with gemini_only_stack(tmp_path, monkeypatch) as stack:
        stack.gemini.reset(lambda request: model_not_found(request.model))
        for name in ("raw/a.png", "raw/b.png"):
            blob = stack.upload(name, cupcakes())
            assert stack.deliver(stack.event_for(blob)).status_code == 200
        rows = stack.rows("images")

    assert [(row["status"], row["error_type"]) for row in rows] == [("failed", "model_retired")] * 2
    assert "set GEMINI_MODEL=gemini-3.5-flash" in rows[0]["error_message"]
    retired = [w for w in warnings(capsys) if "Gemini model settings" in w["message"]]
    assert len(retired) == 1 and "was retired on 2026-10-20" in retired[0]["message"]


# -- 3.5+ answer shapes ---------------------------------------------------------------------

LEFT_HALF_XY = [[0, 0], [500, 0], [500, 1000], [0, 1000]]  # x 0-500 over the full height


def test_the_parser_reads_the_boxes_wrapper_and_xy_polygons():
    text = json.dumps({"boxes": [{"box_2d": [0, 0, 1000, 1000], "label": "bag", "mask": LEFT_HALF_XY}]})

    [detection] = parse_response(text, (200, 100), point_order="xy").detections

    mask = detection.mask
    assert mask.size == (200, 100)
    assert mask.getpixel((50, 90)) == 255 and mask.getpixel((150, 10)) == 0
    assert parse_response('{"boxes": []}', (200, 100)).detections == []


@pytest.mark.parametrize(("model", "left_half"), [("gemini-3.6-flash", True), ("gemini-3.7-flash", True)])
def test_a_wrapped_answer_with_a_polygon_mask_from_3_6_and_3_7(fake, model_input, model, left_half):
    answer = {
        "boxes": [
            {
                "box_2d": [0, 0, 1000, 1000],
                "label": "bag",
                "color": "black",
                "general_description": "",
                "detailed_description": "",
                "mask": LEFT_HALF_XY,
            }
        ]
    }
    fake.enqueue(Answer(json.dumps(answer)))

    [detection] = detect(detector("vertex", GEMINI_MODEL=model), model_input).detections

    assert detection.label == "bag"
    # The polygon is [x, y]: the mask covers the left half, not the top half.
    assert detection.mask.getpixel((100, 500)) == 255 and detection.mask.getpixel((500, 100)) == 0


# -- Terraform ------------------------------------------------------------------------------


def _location_precondition() -> dict:
    preconditions = block(resource("google_cloudfunctions2_function", "segmentation"), "lifecycle")["precondition"]
    [found] = [p for p in preconditions if "var.vertex_location" in json.dumps(p)]
    return found


@pytest.mark.parametrize(
    ("model", "needs_multi_region"),
    [
        ("gemini-2.5-flash", False),
        ("gemini-3.5-flash", False),
        ("gemini-3-flash-preview", False),
        ("gemini-3.6-flash", True),
        ("gemini-3.7-flash", True),
        ("gemini-3.8-flash", True),
        ("gemini-4-argon", True),
        ("gemini-4.1-pro", True),
        ("gemini-10-x", True),
    ],
)
def test_terraform_refuses_a_single_region_for_3_6_and_later(model, needs_multi_region):
    precondition = _location_precondition()
    condition = precondition["condition"]
    # Terraform's regex() is RE2; this one is also valid Python.
    pattern = re.search(r'regex\("((?:[^"\\]|\\.)*)", var\.gemini_model\)', condition).group(1)
    pattern = pattern.encode().decode("unicode_escape")
    assert bool(re.search(pattern, model)) == needs_multi_region
    assert capabilities(model).known is False or (not capabilities(model).serves("europe-west4")) == needs_multi_region
    assert 'contains(["global", "eu", "us"], var.vertex_location)' in condition
    assert "set vertex_location to global, eu or us" in precondition["error_message"]
