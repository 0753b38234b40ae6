"""Paths to the shared, read-only real-data fixtures (`../shared/fixtures`, beside the repository)."""

from __future__ import annotations

from pathlib import Path

SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def shared_fixture(*parts: str) -> Path:
    """Path of a file under ../shared/fixtures; fails loudly (never skips) when it is missing."""
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"shared fixture {path} is missing: these tests need ../shared/fixtures beside the repository"
        )
    return path
