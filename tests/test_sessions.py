"""read_environment_once: the Google clients' sessions skip per-request netrc and proxy lookups
only when the environment has none, and keep honouring proxies, netrc and CA bundles."""

from __future__ import annotations

import socket

import pytest
import requests

from segmentation.detections import ObjectRef
from segmentation.errors import TransientError
from segmentation.sessions import read_environment_once
from segmentation.storage import GcsStorage

PROXY_VARIABLES = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "NETRC",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    """No proxy variables, no CA bundle variables, and a home directory without a netrc file."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_a_clean_environment_is_read_once_and_a_ca_bundle_kept(clean_environment, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/bundle-for-test.pem")
    session = requests.Session()
    assert read_environment_once(session)
    assert session.trust_env is False and session.verify == "/etc/ssl/certs/bundle-for-test.pem"
    # what requests itself would have used for a request with trust_env on
    settings = requests.Session().merge_environment_settings("https://storage.googleapis.com/x", {}, None, None, None)
    assert settings["verify"] == session.verify


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "http_proxy", "NO_PROXY", "NETRC"])
def test_a_proxy_or_netrc_variable_leaves_the_session_alone(clean_environment, monkeypatch, variable):
    monkeypatch.setenv(variable, "http://127.0.0.1:3128" if "PROXY" in variable.upper() else "/tmp/netrc")
    session = requests.Session()
    assert not read_environment_once(session)
    assert session.trust_env is True


def test_a_netrc_file_leaves_the_session_alone(clean_environment):
    (clean_environment / ".netrc").write_text("machine example.com login a password b\n")
    session = requests.Session()
    assert not read_environment_once(session)
    assert session.trust_env is True


def test_the_storage_client_skips_the_lookups_and_still_works(clean_environment, monkeypatch, storage_emulator):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage_emulator)
    storage_emulator.create_bucket("sessions-test")
    gcs = GcsStorage()
    gcs.write("sessions-test", "raw/a.jpg", b"abc", content_type="image/jpeg")
    assert gcs.client._http.trust_env is False
    assert gcs.read(ObjectRef("sessions-test", "raw/a.jpg", None), max_bytes=10) == b"abc"


def test_the_storage_client_still_goes_through_a_configured_proxy(clean_environment, monkeypatch, storage_emulator):
    """A proxy that refuses connections: the request must fail, proving it was sent there and
    not straight to the (working) emulator."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage_emulator)
    storage_emulator.create_bucket("sessions-test")
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    gcs = GcsStorage()
    assert gcs.client._http.trust_env is True
    with pytest.raises(TransientError):
        gcs.write("sessions-test", "raw/a.jpg", b"abc", content_type="image/jpeg")


def test_the_bigquery_client_skips_the_lookups_and_still_inserts(clean_environment, monkeypatch):
    from devtools.standins.bigquery_server import FakeBigQuery
    from segmentation.sink import BigQuerySink
    from tests.test_sink import schema_row

    with FakeBigQuery() as fake:
        monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", fake.url)
        sink = BigQuerySink("proj.ds.objects", "proj.ds.images")
        assert sink.client._http.trust_env is False
        sink.insert("images", [schema_row("images", 1)])
        assert [row["insertId"] for row in fake.rows("proj.ds.images")] == ["images-1"]
