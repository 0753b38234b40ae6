"""Deterministic names for everything the function writes, so a redelivered event rewrites
the same objects and rows instead of adding new ones.

The stem is the object's whole path under the source prefix, extension included, so cameras
keep their folders and every source object has outputs of its own: `raw/cam1/belt.jpg` gives
crops `processed/cam1/belt.jpg-output-0001.jpg` and the overview
`processed-overview/cam1/processed_belt.jpg.jpg`, while `raw/cam1/belt.png` gives
`processed/cam1/belt.png-output-0001.jpg`.

>>> names = OutputNames.for_object("raw/cam1/belt.jpg", source_prefix="raw/", crops_prefix="processed/",
...                                overview_prefix="processed-overview/", markers_prefix="processed-markers/")
>>> names.crop(1), names.overview
('processed/cam1/belt.jpg-output-0001.jpg', 'processed-overview/cam1/processed_belt.jpg.jpg')
>>> names.marker, names.claim
('processed-markers/cam1/belt.jpg.json', 'processed-markers/cam1/belt.jpg.claim')

`bucket` is where they all go (OUTPUT_BUCKET, or the source's own bucket when that is empty).
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

# Cloud Storage object names are at most 1024 bytes of UTF-8.
MAX_OBJECT_NAME_BYTES = 1024
# Room kept for the longest suffix added to a stem ("-output-NNNN.jpg", ".claim", "processed_").
_SUFFIX_ROOM = 40
PENDING_EMBEDDINGS_SUFFIX = ".embeddings-pending.json"


@dataclass(frozen=True)
class OutputNames:
    """Where one source object's outputs go, and the ids of its rows."""

    stem: str
    crops_prefix: str
    overview_prefix: str
    marker: str
    claim: str
    bucket: str = ""
    # What `segmentation.replay --embeddings` needs to index the crops later, left when indexing failed.
    pending_embeddings: str = ""

    @classmethod
    def for_object(
        cls,
        name: str,
        *,
        source_prefix: str,
        crops_prefix: str,
        overview_prefix: str,
        markers_prefix: str,
        bucket: str = "",
    ) -> OutputNames:
        relative = name[len(source_prefix) :] if name.startswith(source_prefix) else name
        relative = _safe_path(relative)
        longest_prefix = max(len(p.encode()) for p in (crops_prefix, overview_prefix, markers_prefix))
        budget = MAX_OBJECT_NAME_BYTES - longest_prefix - _SUFFIX_ROOM
        # The extension stays, so a.jpg and a.png never share an output, marker or claim.
        stem = _shorten(relative, budget)
        return cls(
            stem=stem,
            crops_prefix=crops_prefix,
            overview_prefix=overview_prefix,
            marker=f"{markers_prefix}{stem}.json",
            claim=f"{markers_prefix}{stem}.claim",
            bucket=bucket,
            pending_embeddings=f"{markers_prefix}{stem}{PENDING_EMBEDDINGS_SUFFIX}",
        )

    def crop(self, index: int) -> str:
        """Name of the crop of the 1-based `index`-th object."""
        return f"{self.crops_prefix}{self.stem}-output-{index:04d}.jpg"

    @property
    def crops_glob_prefix(self) -> str:
        """The prefix every crop of this image starts with (to find stale crops of older generations)."""
        return f"{self.crops_prefix}{self.stem}-output-"

    @property
    def overview(self) -> str:
        head, tail = posixpath.split(self.stem)
        return f"{self.overview_prefix}{posixpath.join(head, 'processed_' + tail)}.jpg"


def row_id(*parts: object) -> str:
    """A stable id from the parts that make a row unique (used as BigQuery's insertId).

    >>> row_id("b", "raw/a.jpg", 7, 1) == row_id("b", "raw/a.jpg", 7, 1) != row_id("b", "raw/a.jpg", 8, 1)
    True
    """
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()[:32]


def _safe_path(path: str) -> str:
    """Drop empty, '.' and '..' segments so no output name climbs out of its prefix.

    Cloud Storage names are flat, so `raw//a.jpg`, `raw/./a.jpg` and `raw/x/../a.jpg` are
    objects of their own, not `raw/a.jpg`. A path that needed cleaning therefore gets a hash of
    the original before its extension, so it never shares crops, overview or marker (nor has
    its crops deleted as stale) with the object whose name is the cleaned one.

    >>> _safe_path("cam1/a.jpg"), _safe_path("../a.jpg"), _safe_path("/a.jpg")
    ('cam1/a.jpg', 'a~2845741b69a9a93c.jpg', 'a~355f362d5cc8c315.jpg')
    """
    segments = [segment for segment in path.split("/") if segment not in ("", ".", "..")]
    cleaned = "/".join(segments)
    if cleaned and cleaned == path:
        return cleaned
    digest = hashlib.sha256(path.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]
    head, tail = posixpath.split(cleaned)
    root, extension = posixpath.splitext(tail)
    return posixpath.join(head, f"{root or '_'}~{digest}{extension}")


def _shorten(text: str, budget: int) -> str:
    """Cut `text` to `budget` UTF-8 bytes, keeping it unique with a hash of the whole."""
    if len(text.encode()) <= budget:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    kept = text.encode()[: budget - len(digest) - 1].decode(errors="ignore")
    return f"{kept}~{digest}"
