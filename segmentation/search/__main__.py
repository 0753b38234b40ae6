"""Operators' lost-bag search from a terminal: the function's search, printed as a table.

    python -m segmentation.search photo.jpg --camera cam2 --since 2h --top 10
    python -m segmentation.search "dark green hard-shell suitcase with a yellow ribbon"
    python -m segmentation.search gs://bucket/search/lost-17.jpg --sheet lost-17-sheet.jpg

The argument is a local photo, a gs:// photo, a local .txt file, or else the description itself.
It reads the same settings as the function (environment variables): with BigQuery tables set it
searches BigQuery's `embeddings` table with VECTOR_SEARCH and reads crops from Cloud Storage;
without, the SQLite sink at SQLITE_PATH and Cloud Storage at STORAGE_EMULATOR_HOST, which is what
`make local` runs. The contact sheet is written to --sheet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from segmentation.config import Config
from segmentation.errors import PipelineError
from segmentation.events import IMAGE_EXTENSIONS
from segmentation.images import load_image
from segmentation.logs import redact
from segmentation.search.embedders import embedder_from_config
from segmentation.search.query import BadQueryError, Query, filters_from
from segmentation.search.results import contact_sheet, filters_json
from segmentation.search.service import Found, decoded_image, ref_of_uri, searcher_for
from segmentation.search.store import Filters

if TYPE_CHECKING:
    from PIL import Image

    from segmentation.storage import Storage

COLUMNS = ("rank", "score", "camera", "seen_at", "label", "item_color", "crop_uri")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m segmentation.search", description=__doc__.split("\n")[0])
    parser.add_argument("query", help="a photo (local path or gs:// URI), a .txt file, or a description")
    parser.add_argument("--camera", help="only crops from this camera (folder under SOURCE_PREFIX)")
    parser.add_argument("--since", help="only crops seen after this: a duration such as 2h, 30m, 1d, or an ISO time")
    parser.add_argument("--until", help="only crops seen before this (same forms as --since)")
    parser.add_argument("--color", help="only crops whose detected colour contains this word")
    parser.add_argument("--top", type=int, default=None, help="matches to show (default SEARCH_TOP_K)")
    parser.add_argument("--include-offline", action="store_true", help="also crops the offline detector found")
    parser.add_argument("--sheet", default="search-sheet.jpg", help="where to write the contact sheet ('' for none)")
    parser.add_argument("--json", action="store_true", help="print the matches as JSON lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    config = Config.from_env(environ)
    from segmentation.storage import GcsStorage

    storage = GcsStorage()
    embedder = embedder_from_config(config)
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="search")
    detector = None
    if config.resolved_backend:
        from segmentation.gemini import GeminiDetector

        detector = GeminiDetector(config)
    searcher = searcher_for(config, embedder, storage, executor, detector=detector)
    if searcher is None:
        print("search is off: EMBEDDER=off, so no crop is indexed", file=sys.stderr)
        return 2
    now = dt.datetime.now(dt.UTC)
    deadline = time.monotonic() + config.retry_deadline_s
    try:
        filters = filters_from(
            camera=args.camera,
            since=args.since,
            until=args.until,
            color=args.color,
            include_offline=args.include_offline or config.detector == "offline",
            now=now,
        )
        query, photo = _query(args.query, storage, config, filters)
        top = args.top or config.search_top_k
        found = searcher.search(query, photo, top=top, deadline=deadline)
        if args.sheet:
            crops = searcher.read_crops([match.candidate for match in found.matches], deadline)
            sheet = contact_sheet(
                found.matches, [decoded_image(crop) for crop in crops], query_image=photo, query_text=query.text
            )
            Path(args.sheet).write_bytes(sheet)
    except PipelineError as exc:
        print(f"search failed: {exc.error_type}: {redact(str(exc))}", file=sys.stderr)
        return 1
    finally:
        executor.shutdown(wait=False)
        if embedder is not None:
            embedder.close()
    _print(found, query, args)
    return 0


def _query(argument: str, storage: Storage, config: Config, filters: Filters) -> tuple[Query, Image.Image | None]:
    """The query an argument names, and its decoded photo if it is one."""
    path = Path(argument)
    if argument.startswith("gs://"):
        data = storage.read(ref_of_uri(argument), max_bytes=config.max_image_bytes)
        return Query(photo=argument, filters=filters), load_image(data, max_pixels=config.max_image_pixels).image
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        if not path.is_file():
            raise BadQueryError(f"no such photo: {path}")
        data = path.read_bytes()
        return Query(photo=str(path), filters=filters), load_image(data, max_pixels=config.max_image_pixels).image
    if path.suffix.lower() == ".txt" and path.is_file():
        argument = path.read_text(encoding="utf-8")
    text = argument.strip()
    if not text:
        raise BadQueryError("the description is empty")
    return Query(text=text, filters=filters), None


def _print(found: Found, query: Query, args: argparse.Namespace) -> None:
    if args.json:
        for match in found.matches:
            candidate = match.candidate
            print(json.dumps({"rank": match.rank, "rerank_score": match.rerank_score, **vars(candidate)}))
        return
    shown = filters_json(query.filters)
    print(
        f"{query.kind} query, {found.space.embedder} {found.space.model} ({found.space.dimensions} dims)"
        + (f", filters {json.dumps(shown)}" if shown else "")
    )
    cells = [
        [
            str(match.rank),
            f"{match.candidate.score:.3f}",
            match.candidate.camera or "",
            match.candidate.seen_at[:19],
            match.candidate.label or "",
            match.candidate.item_color or "",
            match.candidate.crop_uri,
        ]
        for match in found.matches
    ]
    widths = [max([len(column)] + [len(_clean(line[i])) for line in cells]) for i, column in enumerate(COLUMNS)]
    print("  ".join(column.ljust(width) for column, width in zip(COLUMNS, widths, strict=True)))
    for line in cells:
        print("  ".join(_clean(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
    if not found.matches:
        print("no indexed crop matches (is anything indexed with this embedder? are the filters too narrow?)")
    if found.rerank_error:
        print(f"re-rank failed, embedding order shown: {found.rerank_error}")
    if args.sheet:
        print(f"contact sheet: {args.sheet}")


def _clean(text: str) -> str:
    """Labels come from a model: never send control characters to the terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)[:80]


if __name__ == "__main__":
    sys.exit(main())
