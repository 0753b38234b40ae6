"""The README's promise: exactly two set-up commands, and the first runs the whole job offline
in a fresh clone (no credentials, nothing installed by hand)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    """The shell commands in the README's "Set up (fresh clone)" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set up (fresh clone)", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, flags=re.DOTALL)


def test_the_readme_has_exactly_two_set_up_commands_and_ci_runs_the_test_one():
    commands = setup_commands()
    assert commands == ["make local", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.timeout(900)
def test_the_first_command_runs_the_whole_job_offline_in_a_fresh_clone(tmp_path):
    for port in (9023, 8080):
        assert port_is_free(port), f"port {port} is taken; `make local` needs it"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GEMINI_", "GOOGLE_", "BQ_", "STORAGE_EMULATOR", "BIGQUERY_EMULATOR", "VIRTUAL_ENV"))
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)

    result = subprocess.run(
        setup_commands()[0], shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "the offline detector processes the images" in out
    image_lines = [line for line in out.splitlines() if line.startswith("raw/demo/") and " ok " in line]
    assert len(image_lines) == len(list((clone / "samples").glob("*.jpg")))
    assert re.search(r"\((\d+) objects rows", out) and int(re.search(r"\((\d+) objects rows", out)[1]) > 0
    overviews = list((clone / "local-data" / "gcs").rglob("processed_*.jpg"))
    assert len(overviews) == len(image_lines)
    shutil.rmtree(clone / ".venv", ignore_errors=True)
