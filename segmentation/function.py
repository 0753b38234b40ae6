"""Wiring: the configured pipeline, built once per process, and the CloudEvent handler body.

`main.py` stays a two-line entry point; this module is what it calls. The pipeline and its
clients are built on the first event (not at import) and shared by every request thread of
the instance, because building clients is the expensive part of a cold start.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Mapping
from typing import Any

from segmentation import logs
from segmentation.backgrounds import OfflineDetectors
from segmentation.config import Config
from segmentation.errors import UnexpectedError
from segmentation.events import EventError, object_ref_from_event
from segmentation.gemini import GeminiDetector
from segmentation.pipeline import Outcome, Pipeline
from segmentation.search.embedders import embedder_from_config
from segmentation.search.service import SearchOutcome, SearchService, searcher_for
from segmentation.sink import sink_from_config
from segmentation.storage import GcsStorage

_lock = threading.Lock()
_pipeline: Pipeline | None = None
_search: SearchService | None = None


def build_pipeline(config: Config) -> Pipeline:
    """The production pipeline for `config`: Cloud Storage, Gemini (with the offline detector
    as gate and fallback, as configured), BigQuery or SQLite."""
    storage = GcsStorage()
    uses_offline = config.detector == "offline" or bool(config.empty_belt_gate_cameras) or config.offline_fallback
    return Pipeline(
        config,
        storage=storage,
        sink=sink_from_config(config),
        detector=GeminiDetector(config),
        offline=OfflineDetectors(storage, config) if uses_offline else None,
        embedder=embedder_from_config(config),
    )


def build_search(pipeline: Pipeline) -> SearchService:
    """The lost-bag search service beside `pipeline`, sharing its clients and embedder."""
    return SearchService(
        pipeline.config,
        storage=pipeline.storage,
        sink=pipeline.sink,
        searcher=searcher_for(
            pipeline.config, pipeline.embedder, pipeline.storage, pipeline.executor, detector=pipeline.detector
        ),
        executor=pipeline.executor,
    )


def default_pipeline() -> Pipeline:
    """The process-wide pipeline, configured from the environment on first use."""
    global _pipeline
    with _lock:
        if _pipeline is None:
            config = Config.from_env()
            logs.set_level(config.log_level)
            _pipeline = build_pipeline(config)
        return _pipeline


def default_search() -> SearchService:
    """The process-wide search service, built beside the pipeline on first use."""
    global _search
    pipeline = default_pipeline()
    with _lock:
        if _search is None:
            _search = build_search(pipeline)
        return _search


def handle_cloud_event(
    attributes: Mapping[str, Any], data: Any, pipeline: Pipeline | None = None, search: SearchService | None = None
) -> Outcome | SearchOutcome | None:
    """Process one object-finalize event (an image, or a lost-bag query under SEARCH_PREFIX); a
    malformed or foreign event is logged and acknowledged.

    Raises only `TransientError` (already logged as one JSON line): the platform redelivers."""
    try:
        ref = object_ref_from_event(attributes, data)
    except EventError as exc:
        logs.log_event(
            "WARNING",
            f"ignored event: {exc}",
            event_id=attributes.get("id"),
            event_type=attributes.get("type"),
            event_source=attributes.get("source"),
        )
        return None
    try:
        if pipeline is None:
            pipeline = default_pipeline()
        if search is None and ref.name.startswith(pipeline.config.search_prefix):
            search = default_search() if pipeline is _pipeline else build_search(pipeline)
    except Exception as exc:
        error = UnexpectedError(f"cannot set up the function: {type(exc).__name__}: {exc}"[:2000])
        logs.log_event(
            "CRITICAL",
            str(error),
            error_type=error.error_type,
            event_id=attributes.get("id"),
            stack_trace="".join(traceback.format_exception(exc))[-8000:],
        )
        raise error from None
    if search is not None and search.handles(ref.name):
        return search.process(ref)
    return pipeline.process(ref)


def reset_pipeline() -> None:
    """Forget the process-wide pipeline; the next event rebuilds it from the environment."""
    global _pipeline, _search
    with _lock:
        if _pipeline is not None:
            _pipeline.detector.close()
            if _pipeline.embedder is not None:
                _pipeline.embedder.close()
        _pipeline = None
        _search = None
