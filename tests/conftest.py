"""Fixtures shared by the Gemini client tests (tests/test_gemini.py, tests/test_models.py): the
Gemini wire stand-in with both SDK base URLs pointing at it, and a small model input."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from segmentation import gemini
from segmentation.images import ModelInput
from devtools.standins.gemini_server import Answer, FakeGeminiServer

# A two-object answer, the stand-in's default in `fake`.
TWO_BAGS = json.dumps(
    [
        {"box_2d": [100, 100, 400, 300], "label": "suitcase", "color": "black",
         "general_description": "A hard-shell suitcase.", "detailed_description": "Four wheels."},
        {"box_2d": [500, 600, 900, 950], "label": "backpack", "color": "red",
         "general_description": "A backpack.", "detailed_description": "Two straps."},
    ]
)

# Environment variables google-genai reads; cleared so only what a test sets counts.
SDK_ENV = (
    "GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_GENAI_API_VERSION",
    "GOOGLE_GEMINI_BASE_URL", "GOOGLE_VERTEX_BASE_URL",
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
