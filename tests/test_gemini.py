"""GeminiDetector with the real google-genai client, talking HTTP to the fake Gemini server."""

from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.oauth2.credentials import Credentials

from devtools.standins.gemini_server import (
    Answer,
    ErrorReply,
    estimate_text_tokens,
    internal_error,
    model_not_found,
    rate_limited,
    sample_numbers,
    sample_text,
    slow,
    truncated,
    unavailable,
)
from segmentation import gemini, logs
from segmentation.config import Config
from segmentation.errors import (
    DetectorNotConfiguredError,
    ModelRequestError,
    ResponseParseError,
    TransientError,
)
from segmentation.gemini import REASK_INSTRUCTION, GeminiDetector, model_family
from segmentation.images import ModelInput
from tests.conftest import TWO_BAGS

API_KEY = "gemini-test-key-that-must-never-leak-0123456789"
IMAGE_SIZE = (620, 620)

# Objects in each recorded answer (shared/fixtures/gemini/sample_N.source.txt); sample 3 has
# 15 entries, two of them repeating another entry's box, which the parser drops.
EXPECTED_COUNTS = {1: 13, 2: 20, 3: 13, 4: 15, 5: 13, 6: 6}


def api_key_config(**env: str) -> Config:
    return Config.from_env({"GEMINI_API_KEY": API_KEY, **env})


def vertex_config(**env: str) -> Config:
    return Config.from_env({"GOOGLE_CLOUD_PROJECT": "test-project", "GOOGLE_CLOUD_LOCATION": "us-central1", **env})


def vertex_detector(config: Config) -> GeminiDetector:
    return GeminiDetector(config, credentials=Credentials(token="test-token"))


def detect(detector: GeminiDetector, model_input: ModelInput, seconds: float = 10.0):
    try:
        return detector.detect(model_input, IMAGE_SIZE, deadline=time.monotonic() + seconds)
    finally:
        detector.close()


# -- backends and the request --------------------------------------------------------------


def test_api_key_backend_calls_the_developer_api_path_with_the_key(fake, model_input):
    fake.enqueue(Answer(TWO_BAGS, model_version="gemini-3.5-flash-002"))

    result = detect(GeminiDetector(api_key_config()), model_input)

    [request] = fake.requests
    assert request.path == "/v1beta/models/gemini-3.5-flash:generateContent"
    assert request.api == "gemini" and request.api_key_present and not request.bearer_present
    assert [d.label for d in result.detections] == ["suitcase", "backpack"]
    assert result.detector == "gemini" and result.model == "gemini-3.5-flash-002"


def test_vertex_backend_calls_the_vertex_path_with_a_bearer_token(fake, model_input):
    result = detect(vertex_detector(vertex_config(GEMINI_MODEL="gemini-3.5-pro")), model_input)

    [request] = fake.requests
    assert request.path == (
        "/v1beta1/projects/test-project/locations/us-central1/publishers/google/models/gemini-3.5-pro:generateContent"
    )
    assert request.api == "vertex" and request.bearer_present and not request.api_key_present
    assert len(result.detections) == 2


def test_request_carries_image_prompt_instruction_schema_and_json_mode(fake, model_input):
    detect(GeminiDetector(api_key_config(GEMINI_MAX_OBJECTS="7", GEMINI_PROMPT="Find bags.")), model_input)

    [request] = fake.requests
    assert request.image_bytes == model_input.data and request.image_mime_type == "image/jpeg"
    assert request.image_part["mediaResolution"] == {"level": "MEDIA_RESOLUTION_HIGH"}
    assert request.texts == ["Find bags."]
    assert "at most 7 objects" in request.system_instruction
    generation = request.generation_config
    assert generation["responseMimeType"] == "application/json"
    schema = generation["responseJsonSchema"]
    assert schema["type"] == "array" and schema["maxItems"] == 7
    assert schema["items"]["propertyOrdering"][0] == "box_2d"
    assert set(schema["items"]["required"]) == {
        "box_2d",
        "label",
        "color",
        "general_description",
        "detailed_description",
    }
    assert schema["items"]["properties"]["box_2d"]["items"]["type"] == "integer"
    assert generation["maxOutputTokens"] == 8192
    assert "temperature" not in generation
    # The per-request timeout reaches the server as X-Server-Timeout (seconds, rounded up).
    assert request.headers["x-server-timeout"] == "10"


def test_stray_braces_in_the_system_instruction_are_sent_as_written(fake, model_input):
    instruction = 'Return {"box_2d": ...} items, at most {max_objects}. Literal {braces} stay.'
    detect(GeminiDetector(api_key_config(GEMINI_SYSTEM_INSTRUCTION=instruction, GEMINI_MAX_OBJECTS="3")), model_input)

    assert fake.requests[0].system_instruction == 'Return {"box_2d": ...} items, at most 3. Literal {braces} stay.'


def test_temperature_is_sent_only_when_set(fake, model_input):
    # gemini-3.5-flash on Vertex AI honours it (on the Developer API it is served by 3.6, which does not).
    detect(vertex_detector(vertex_config(GEMINI_TEMPERATURE="0.5")), model_input)

    assert fake.requests[0].generation_config["temperature"] == 0.5


@pytest.mark.parametrize(
    ("model", "env", "expected"),
    [
        ("gemini-3.5-flash", {}, {"thinkingLevel": "MINIMAL"}),
        ("gemini-3.5-flash", {"GEMINI_THINKING_LEVEL": "low"}, {"thinkingLevel": "LOW"}),
        ("gemini-3.5-flash", {"GEMINI_THINKING_LEVEL": ""}, None),
        ("gemini-2.5-flash", {}, {"thinkingBudget": 0}),
        ("gemini-2.5-flash", {"GEMINI_THINKING_BUDGET": ""}, None),
        ("gemma-3-27b-it", {}, None),
    ],
)
def test_thinking_config_follows_the_model_family(fake, model_input, model, env, expected):
    detect(GeminiDetector(api_key_config(GEMINI_MODEL=model, **env)), model_input)

    assert fake.requests[0].generation_config.get("thinkingConfig") == expected


def test_media_resolution_goes_in_the_config_for_models_before_gemini_3(fake, model_input):
    detect(GeminiDetector(api_key_config(GEMINI_MODEL="gemini-2.5-flash")), model_input)

    [request] = fake.requests
    assert "mediaResolution" not in request.image_part
    assert request.generation_config["mediaResolution"] == "MEDIA_RESOLUTION_HIGH"


def test_model_family():
    assert model_family("gemini-3-flash-preview") == "3"
    assert model_family("models/gemini-2.0-flash") == "2"
    assert model_family("gemini-1.5-pro") == ""


# -- answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", sample_numbers())
def test_every_recorded_answer_parses_through_the_client(fake, model_input, n):
    fake.enqueue(Answer(sample_text(n)))

    result = detect(GeminiDetector(api_key_config()), model_input)

    assert len(result.detections) == EXPECTED_COUNTS[n]
    assert not result.partial
    assert len(fake.requests) == 1


def test_usage_comes_from_usage_metadata(fake, model_input):
    result = detect(GeminiDetector(api_key_config()), model_input)

    usage = result.usage
    assert usage.prompt_tokens > 1120  # a HIGH-resolution image plus the text
    assert usage.output_tokens > 0 and usage.thinking_tokens == 0
    assert usage.total_tokens == usage.prompt_tokens + usage.output_tokens
    assert result.latency_ms > 0


def test_a_cut_off_answer_keeps_its_complete_objects_and_is_partial(fake, model_input):
    text = sample_text(4)
    cut = text.index('{"box_2d": [556, 40')  # inside the eighth object: seven are complete
    fake.enqueue(truncated(text, cut + 20))

    result = detect(GeminiDetector(api_key_config()), model_input)

    assert result.partial
    assert len(result.detections) == 7
    assert len(fake.requests) == 1


def test_an_unusable_answer_is_asked_for_once_more(fake, model_input):
    fake.enqueue(Answer("Sorry, I can't find any JSON here."), Answer(TWO_BAGS))

    result = detect(GeminiDetector(api_key_config()), model_input)

    assert len(result.detections) == 2
    first, second = fake.requests
    assert second.image_bytes == first.image_bytes
    assert second.texts == [*first.texts, REASK_INSTRUCTION]
    # Usage covers both calls.
    unusable = "Sorry, I can't find any JSON here."
    assert result.usage.output_tokens == estimate_text_tokens(unusable) + estimate_text_tokens(TWO_BAGS)
    assert result.usage.prompt_tokens > 2 * 1120
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.output_tokens


def test_two_unusable_answers_raise_response_parse_error(fake, model_input):
    fake.enqueue(Answer("not json"), Answer("still not json"))

    with pytest.raises(ResponseParseError, match="both"):
        detect(GeminiDetector(api_key_config()), model_input)
    assert len(fake.requests) == 2


def test_a_blocked_answer_counts_as_unusable(fake, model_input):
    fake.enqueue(Answer(None, finish_reason="SAFETY"), Answer(TWO_BAGS))

    result = detect(GeminiDetector(api_key_config()), model_input)

    assert len(result.detections) == 2 and len(fake.requests) == 2


# -- errors and retries --------------------------------------------------------------------


def test_429_waits_for_the_servers_retry_delay_then_succeeds(fake, model_input):
    fake.enqueue(rate_limited("1s"))
    started = time.monotonic()

    result = detect(GeminiDetector(api_key_config()), model_input)

    assert time.monotonic() - started >= 0.95
    assert len(fake.requests) == 2 and len(result.detections) == 2
    assert result.latency_ms >= 950


def test_500_is_retried(fake, model_input):
    fake.enqueue(internal_error())

    result = detect(GeminiDetector(api_key_config()), model_input)

    assert len(fake.requests) == 2 and len(result.detections) == 2


def test_a_timed_out_request_is_retried(fake, model_input):
    fake.enqueue(slow(Answer(TWO_BAGS), 2.0))

    result = detect(GeminiDetector(api_key_config(GEMINI_TIMEOUT_S="0.3")), model_input)

    assert len(fake.requests) == 2 and len(result.detections) == 2


def test_persistent_503_raises_transient_error_at_the_deadline(fake, model_input):
    fake.default = lambda request: unavailable()
    started = time.monotonic()

    with pytest.raises(TransientError, match="503"):
        detect(GeminiDetector(api_key_config()), model_input, seconds=1.5)

    assert time.monotonic() - started < 2.0
    assert len(fake.requests) >= 1


def test_no_request_outlives_the_deadline(fake, model_input):
    fake.default = lambda request: slow(Answer(TWO_BAGS), 3.0)
    started = time.monotonic()

    with pytest.raises(TransientError):
        detect(GeminiDetector(api_key_config()), model_input, seconds=0.8)

    assert time.monotonic() - started < 1.3
    assert fake.requests[0].headers["x-server-timeout"] == "1"


def test_vertex_429_without_retry_info_is_retried_with_backoff(fake, model_input):
    fake.enqueue(rate_limited(None))

    result = detect(vertex_detector(vertex_config()), model_input)

    assert [r.api for r in fake.requests] == ["vertex", "vertex"] and len(result.detections) == 2


def test_a_refused_connection_is_transient(fake, model_input, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", f"http://127.0.0.1:{closed_port}/")

    with pytest.raises(TransientError, match="ConnectError"):
        detect(GeminiDetector(api_key_config()), model_input, seconds=0.5)


def test_an_unknown_model_fails_at_once_with_the_servers_message(fake, model_input):
    fake.enqueue(model_not_found("gemini-9-nonexistent"))

    with pytest.raises(ModelRequestError, match=r"404 NOT_FOUND.*gemini-9-nonexistent"):
        detect(GeminiDetector(api_key_config(GEMINI_MODEL="gemini-9-nonexistent")), model_input)
    assert len(fake.requests) == 1


def test_threads_share_one_client(fake, model_input, monkeypatch):
    built = []
    real_client = gemini.genai.Client

    def counting_client(**kwargs):
        built.append(kwargs)
        time.sleep(0.05)  # widen the window in which a second build could sneak in
        return real_client(**kwargs)

    monkeypatch.setattr(gemini.genai, "Client", counting_client)
    detector = GeminiDetector(api_key_config())
    deadline = time.monotonic() + 10
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda _: detector.detect(model_input, IMAGE_SIZE, deadline=deadline), range(6)))
    finally:
        detector.close()

    assert len(built) == 1
    assert all(len(result.detections) == 2 for result in results) and len(fake.requests) == 6


def test_missing_backend_raises_not_configured(fake, model_input):
    detector = GeminiDetector(Config.from_env({}))

    with pytest.raises(DetectorNotConfiguredError, match="GEMINI_API_KEY"):
        detect(detector, model_input)
    assert fake.requests == []


def test_the_api_key_never_appears_in_errors_or_logs(fake, model_input, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    logs.set_level("DEBUG")
    echoing = f"API key not valid: {API_KEY}"  # a server echoing the key must not leak it either
    errors: list[Exception] = []
    try:
        fake.enqueue(rate_limited("0.1s", message=echoing), Answer("garbage"), Answer("more garbage"))
        with pytest.raises(ResponseParseError) as parse_error:
            detect(GeminiDetector(api_key_config()), model_input)
        errors.append(parse_error.value)

        fake.enqueue(ErrorReply(400, "INVALID_ARGUMENT", echoing))
        with pytest.raises(ModelRequestError) as request_error:
            detect(GeminiDetector(api_key_config()), model_input)
        errors.append(request_error.value)
    finally:
        logs.set_level("INFO")

    captured = capsys.readouterr()
    seen = " ".join([captured.out, captured.err, caplog.text, *map(str, errors), repr(api_key_config())])
    assert API_KEY not in seen
    assert "retrying" in captured.out and "400 INVALID_ARGUMENT" in str(request_error.value)
