"""Reprocess every object under a prefix, as if each had just been uploaded.

For operators: after an outage, to backfill a bucket that existed before the function, or to
redo images that failed or were answered by the offline fallback. It runs the same pipeline
as the function, in this process, with the same configuration (environment variables) and
the same idempotency: an image whose completion marker names its generation is skipped
unless `--redo` says otherwise, names and row ids are deterministic, so running it twice
(or while the function is also running) adds nothing.

    python -m segmentation.replay gs://BUCKET/raw/                 # whatever is not done yet
    python -m segmentation.replay gs://BUCKET/raw/cam1/ --redo failed,fallback --workers 8
    python -m segmentation.replay gs://BUCKET/raw/ --dry-run        # count only
    python -m segmentation.replay gs://BUCKET/ --embeddings         # index crops whose indexing failed

Exit status: 0 when every object ended processed, skipped or ignored; 1 when some are still
failing transiently (run it again later), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from segmentation.config import Config
from segmentation.detections import ObjectRef
from segmentation.errors import TransientError
from segmentation.pipeline import Pipeline

REDO_CHOICES = ("failed", "fallback", "all")


def parse_gcs_uri(uri: str) -> tuple[str, str]:
    """("bucket", "prefix") of gs://bucket/prefix.

    >>> parse_gcs_uri("gs://belt-images/raw/cam1/")
    ('belt-images', 'raw/cam1/')
    """
    if not uri.startswith("gs://") or len(uri) <= 5:
        raise ValueError(f"{uri!r} is not a gs://BUCKET/PREFIX URI")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    return bucket, prefix


def should_force(marker: dict[str, str] | None, ref: ObjectRef, redo: frozenset[str]) -> bool:
    """Whether to reprocess an object its marker calls done, given the --redo choices.

    >>> ref = ObjectRef("b", "raw/a.jpg", 7)
    >>> should_force({"source-generation": "7", "status": "failed"}, ref, frozenset({"failed"}))
    True
    >>> should_force({"source-generation": "7", "status": "ok", "fallback": "false"}, ref, frozenset({"fallback"}))
    False
    """
    if not marker or marker.get("source-generation") != str(ref.generation):
        return False  # not done yet (or an older generation): processed anyway, no force needed
    return (
        "all" in redo
        or ("failed" in redo and marker.get("status") == "failed")
        or ("fallback" in redo and marker.get("fallback") == "true")
    )


class Progress:
    """A one-line progress bar on a terminal (a line per 10 % otherwise), then a summary."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30):
        self.total, self.stream, self.width = total, stream, width
        self.counts: Counter[str] = Counter()
        self.done = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last_decile = -1

    def add(self, status: str) -> None:
        with self._lock:
            self.done += 1
            self.counts[status] += 1
            filled = self.width * self.done // max(self.total, 1)
            line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} " + " ".join(
                f"{key}={value}" for key, value in sorted(self.counts.items())
            )
            if self.stream.isatty():
                self.stream.write("\r" + line)
            elif (decile := 10 * self.done // max(self.total, 1)) != self._last_decile:
                self._last_decile = decile
                self.stream.write(line + "\n")
            self.stream.flush()

    def summary(self) -> str:
        elapsed = time.monotonic() - self._started
        parts = ", ".join(f"{count} {status}" for status, count in sorted(self.counts.items()))
        return f"{self.done} objects in {elapsed:.1f}s: {parts or 'nothing to do'}"


def replay(
    pipeline: Pipeline,
    refs: Iterable[ObjectRef],
    *,
    redo: frozenset[str] = frozenset(),
    workers: int = 4,
    progress: Progress | None = None,
) -> Counter[str]:
    """Process `refs` through `pipeline`; returns how many ended in each status.

    "retry-later" counts objects that still failed transiently: nothing was recorded for them
    and running the replay again will pick them up.
    """
    refs = list(refs)
    progress = progress or Progress(len(refs))

    def one(ref: ObjectRef) -> None:
        try:
            force = bool(redo) and should_force(pipeline.marker(ref), ref, redo)
            status = pipeline.process(ref, force=force).status
        except TransientError:
            status = "retry-later"
        progress.add(status)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replay") as pool:
        list(pool.map(one, refs))
    return progress.counts


def fill_embeddings(pipeline: Pipeline, bucket: str) -> int:
    """Index the crops the pending documents of `bucket`'s images name (see search.backfill)."""
    import datetime as dt

    from segmentation.search.backfill import fill_pending

    if pipeline.embedder is None:
        print("EMBEDDER=off: nothing to index with", file=sys.stderr)
        return 2
    config = pipeline.config
    counts = fill_pending(
        pipeline.storage,
        pipeline.sink,
        pipeline.embedder,
        bucket=config.outputs_bucket_for(bucket),
        markers_prefix=config.markers_prefix,
        deadline=time.monotonic() + config.retry_deadline_s,
        now=dt.datetime.now(dt.UTC).isoformat(),
    )
    parts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    print(f"pending embeddings: {parts or 'none'}", file=sys.stderr)
    return 1 if counts.get("retry-later") or counts.get("failed") else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segmentation.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("uri", help="gs://BUCKET/PREFIX to reprocess (normally under the source prefix)")
    parser.add_argument("--redo", default="", help=f"also redo images already done: comma-separated {REDO_CHOICES}")
    parser.add_argument("--workers", type=int, default=4, help="images processed at once (default 4)")
    parser.add_argument("--dry-run", action="store_true", help="list and count, process nothing")
    parser.add_argument(
        "--embeddings",
        action="store_true",
        help="instead of images, index the crops of images whose indexing failed (their pending documents)",
    )
    args = parser.parse_args(argv)
    try:
        bucket, prefix = parse_gcs_uri(args.uri)
        redo = frozenset(choice for choice in args.redo.split(",") if choice)
        if not redo <= set(REDO_CHOICES):
            raise ValueError(f"--redo takes {', '.join(REDO_CHOICES)}, not {args.redo!r}")
    except ValueError as exc:
        parser.error(str(exc))

    from segmentation.function import build_pipeline

    config = Config.from_env()
    pipeline = build_pipeline(config)
    if args.embeddings:
        return fill_embeddings(pipeline, bucket)
    if not prefix.startswith(config.source_prefix):
        print(
            f"note: {prefix!r} is not under SOURCE_PREFIX {config.source_prefix!r}; "
            "objects outside it are ignored, as the function would",
            file=sys.stderr,
        )
    refs = pipeline.storage.list_objects(bucket, prefix)
    print(f"{len(refs)} objects under gs://{bucket}/{prefix}", file=sys.stderr)
    if args.dry_run:
        return 0
    progress = Progress(len(refs))
    counts = replay(pipeline, refs, redo=redo, workers=args.workers, progress=progress)
    print("\n" + progress.summary(), file=sys.stderr)
    return 1 if counts.get("retry-later") else 0


if __name__ == "__main__":
    sys.exit(main())
