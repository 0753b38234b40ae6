"""Configuration: defaults, parsing, validation and secret hygiene."""

import re
from pathlib import Path

import pytest

from segmentation.config import SETTINGS, Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_design():
    config = Config.from_env({})
    assert (config.source_prefix, config.crops_prefix, config.overview_prefix) == (
        "raw/",
        "processed/",
        "processed-overview/",
    )
    assert config.gemini_model == "gemini-3.5-flash"
    assert config.gemini_temperature is None
    assert config.gemini_thinking_level == "minimal"
    assert not config.uses_bigquery
    assert config.resolved_backend is None


def test_every_setting_maps_to_one_config_field():
    field_names = [setting.field for setting in SETTINGS]
    assert sorted(field_names) == sorted(Config.__dataclass_fields__)
    assert len({setting.env for setting in SETTINGS}) == len(SETTINGS)


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"SOURCE_PREFIX": "raw"}, "SOURCE_PREFIX"),
        ({"CROPS_PREFIX": "raw/processed/"}, "trigger itself"),
        ({"SOURCE_PREFIX": "a/", "OVERVIEW_PREFIX": "a/overview/"}, "trigger itself"),
        ({"GEMINI_MAX_OBJECTS": "many"}, "GEMINI_MAX_OBJECTS"),
        ({"GEMINI_THINKING_LEVEL": "extreme"}, "GEMINI_THINKING_LEVEL"),
        ({"BQ_OBJECTS_TABLE": "p.d.objects"}, "BQ_IMAGES_TABLE"),
        ({"GEMINI_BACKEND": "openai"}, "GEMINI_BACKEND"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(environ, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_env(environ)


def test_backend_resolution():
    assert Config.from_env({"GEMINI_API_KEY": "k"}).resolved_backend == "api-key"
    assert Config.from_env({"GOOGLE_API_KEY": "k"}).resolved_backend == "api-key"
    assert Config.from_env({"GOOGLE_CLOUD_PROJECT": "p"}).resolved_backend == "vertex"
    assert (
        Config.from_env(
            {"GOOGLE_CLOUD_PROJECT": "p", "GEMINI_BACKEND": "vertex", "GEMINI_API_KEY": "k"}
        ).resolved_backend
        == "vertex"
    )


def test_api_key_never_shows_in_repr_or_errors():
    secret = "AIza-very-secret-key"
    config = Config.from_env({"GEMINI_API_KEY": secret})
    assert secret not in repr(config) and secret not in str(config)
    assert "gemini_api_key=***" in repr(config)


def test_readme_lists_exactly_the_settings():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table_names = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert table_names == {setting.env for setting in SETTINGS}


def test_the_gate_is_switched_on_per_camera():
    from segmentation.config import Config, ConfigError

    assert Config.from_env({}).gate_checks("cam1") is False  # off by default
    listed = Config.from_env({"EMPTY_BELT_GATE_CAMERAS": " cam1, cam3 ,"})
    assert [listed.gate_checks(c) for c in ("cam1", "cam2", "cam3", None)] == [True, False, True, False]
    every = Config.from_env({"EMPTY_BELT_GATE_CAMERAS": "*"})
    assert every.gate_checks("any") and not every.gate_checks(None)
    with pytest.raises(ConfigError, match="EMPTY_BELT_GATE_CAMERAS"):
        Config.from_env({"EMPTY_BELT_GATE_CAMERAS": "cam1/a"})
