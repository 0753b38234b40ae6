"""What a search leaves behind: the results document, the contact sheet and the match rows.

All three are pure functions of the query, its matches and the time of the search, so a
redelivered query writes the same objects and row ids again.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from segmentation import PIPELINE_VERSION
from segmentation.naming import row_id
from segmentation.render import clean_label
from segmentation.search.store import Candidate, Filters, Space

# Contact sheet: tiles per row, tile side in pixels, caption height in pixels.
SHEET_COLUMNS = 5
TILE_PX = 240
CAPTION_PX = 58
SHEET_BACKGROUND = (245, 245, 245)


@dataclass(frozen=True)
class Match:
    """One ranked match: the candidate, and Gemini's same-bag score when the matches were re-ranked."""

    rank: int
    candidate: Candidate
    rerank_score: float | None = None


@dataclass(frozen=True)
class SearchRecord:
    """Identity of one query for its outputs and rows."""

    query_uri: str
    query_generation: int | None
    kind: str
    text: str | None
    filters: Filters
    space: Space
    searched_at: str
    results_uri: str | None = None
    contact_sheet_uri: str | None = None


def filters_json(filters: Filters) -> dict[str, Any]:
    """The filters as JSON values (times in ISO 8601), only those that narrow the search."""
    shown: dict[str, Any] = {}
    for key, value in asdict(filters).items():
        if value is None or value is False:
            continue
        shown[key] = value.isoformat() if isinstance(value, dt.datetime) else value
    return shown


def results_document(
    record: SearchRecord,
    matches: Sequence[Match],
    *,
    rerank_error: str | None = None,
    query_box: tuple[int, int, int, int] | None = None,
) -> dict[str, Any]:
    """The `search-results/<query>.json` document. `query_box`: the bag found in the query photo
    (pixels), when that crop was searched for instead of the whole photo."""
    return {
        "query": {
            "uri": record.query_uri,
            "generation": record.query_generation,
            "kind": record.kind,
            "text": record.text,
            "filters": filters_json(record.filters),
            "box": list(query_box) if query_box else None,
        },
        "status": "ok",
        "embedder": record.space.embedder,
        "model": record.space.model,
        "dimensions": record.space.dimensions,
        "searched_at": record.searched_at,
        "contact_sheet_uri": record.contact_sheet_uri,
        "reranked": any(match.rerank_score is not None for match in matches),
        "rerank_error": rerank_error,
        "matches": [
            {
                "rank": match.rank,
                "score": match.candidate.score,
                "rerank_score": match.rerank_score,
                "crop_uri": match.candidate.crop_uri,
                "source_uri": match.candidate.source_uri,
                "camera": match.candidate.camera,
                "seen_at": match.candidate.seen_at,
                "label": match.candidate.label,
                "item_color": match.candidate.item_color,
                "description": match.candidate.item_gen_desc,
                "object_row_id": match.candidate.object_row_id,
            }
            for match in matches
        ],
    }


def failure_document(query_uri: str, generation: int | None, error_type: str, message: str, searched_at: str) -> dict:
    """The results document of a query that could not be searched, so staff see why."""
    return {
        "query": {"uri": query_uri, "generation": generation},
        "status": "failed",
        "error_type": error_type,
        "error": message,
        "searched_at": searched_at,
        "matches": [],
    }


def document_bytes(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def match_rows(record: SearchRecord, matches: Sequence[Match]) -> list[dict[str, Any]]:
    """One `search_matches` row per match."""
    filters = filters_json(record.filters)
    return [
        {
            "row_id": row_id(record.query_uri, record.query_generation, "match", record.space.model, match.rank),
            "query_uri": record.query_uri,
            "query_generation": record.query_generation,
            "query_kind": record.kind,
            "query_text": record.text,
            "query_filters": json.dumps(filters, sort_keys=True) if filters else None,
            "rank": match.rank,
            "score": float(match.candidate.score),
            "rerank_score": match.rerank_score,
            "object_row_id": match.candidate.object_row_id,
            "crop_uri": match.candidate.crop_uri,
            "source_uri": match.candidate.source_uri,
            "camera": match.candidate.camera,
            "seen_at": match.candidate.seen_at,
            "label": match.candidate.label,
            "item_color": match.candidate.item_color,
            "embedder": record.space.embedder,
            "model": record.space.model,
            "results_uri": record.results_uri,
            "contact_sheet_uri": record.contact_sheet_uri,
            "searched_at": record.searched_at,
            "pipeline_version": PIPELINE_VERSION,
        }
        for match in matches
    ]


def contact_sheet(
    matches: Sequence[Match],
    crops: Sequence[Image.Image | None],
    *,
    query_image: Image.Image | None = None,
    query_text: str | None = None,
    quality: int = 85,
) -> bytes:
    """A JPEG grid: the query first (its photo, or its text), then each match's crop with its
    rank, score, camera and time. A crop that could not be read shows as a grey tile."""
    tiles = 1 + len(matches)
    rows = (tiles + SHEET_COLUMNS - 1) // SHEET_COLUMNS
    sheet = Image.new("RGB", (SHEET_COLUMNS * TILE_PX, rows * (TILE_PX + CAPTION_PX)), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    _tile(sheet, draw, font, 0, query_image, ["QUERY", *_wrapped(query_text or "(photo)", font, TILE_PX - 8, 2)])
    for slot, (match, crop) in enumerate(zip(matches, crops, strict=True), start=1):
        candidate = match.candidate
        score = f"{candidate.score:.3f}" + (
            f"  same bag {match.rerank_score:.2f}" if match.rerank_score is not None else ""
        )
        lines = [f"#{match.rank}  {score}", f"{candidate.camera or '-'}  {_when(candidate.seen_at)}"]
        _tile(sheet, draw, font, slot, crop, lines)
    out = io.BytesIO()
    sheet.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _tile(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    slot: int,
    image: Image.Image | None,
    lines: Sequence[str],
) -> None:
    left = (slot % SHEET_COLUMNS) * TILE_PX
    top = (slot // SHEET_COLUMNS) * (TILE_PX + CAPTION_PX)
    if image is None:
        draw.rectangle((left + 4, top + 4, left + TILE_PX - 5, top + TILE_PX - 5), fill=(200, 200, 200))
    else:
        thumb = image.convert("RGB")
        thumb.thumbnail((TILE_PX - 8, TILE_PX - 8))
        sheet.paste(thumb, (left + (TILE_PX - thumb.width) // 2, top + (TILE_PX - thumb.height) // 2))
    for number, line in enumerate(lines[:3]):
        draw.text((left + 4, top + TILE_PX + 2 + number * 18), clean_label(line, 40), fill=(20, 20, 20), font=font)


def _when(seen_at: str) -> str:
    """'2026-12-05 14:03:07' from an ISO 8601 time (UTC)."""
    try:
        moment = dt.datetime.fromisoformat(seen_at).astimezone(dt.UTC)
    except ValueError:
        return seen_at[:19]
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _wrapped(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, lines: int) -> list[str]:
    words, out, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            out.append(line)
            line = word
        if len(out) == lines:
            break
    if line and len(out) < lines:
        out.append(line)
    return out
