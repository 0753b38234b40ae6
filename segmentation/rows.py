"""The `images` and `objects` rows of one processed image, as pure functions of their inputs.

The pipeline passes in what depends on time or configuration (`processed_at`, `processing_ms`,
the configured detector and prompt), so the same inputs always give the same row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from segmentation import PIPELINE_VERSION
from segmentation.detections import Detection, DetectionResult, ObjectRef
from segmentation.errors import PipelineError
from segmentation.logs import redact
from segmentation.naming import row_id


def common_fields(
    ref: ObjectRef, result: DetectionResult | None, *, configured: tuple[str, str], prompt: str, processed_at: str
) -> dict[str, Any]:
    """The columns both tables share. `configured`: the (detector, model) named when no detector
    answered; `prompt`: the Gemini prompt, recorded only on Gemini's rows."""
    usage = result.usage if result else None
    return {
        "source_uri": ref.uri,
        "source_bucket": ref.bucket,
        "source_name": ref.name,
        "source_generation": ref.generation,
        "detector": result.detector if result else configured[0],
        "model": result.model if result else configured[1],
        "prompt": prompt if (result is None or result.detector == "gemini") else None,
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "output_tokens": usage.output_tokens if usage else 0,
        "thinking_tokens": usage.thinking_tokens if usage else 0,
        "total_tokens": usage.total_tokens if usage else 0,
        "model_latency_ms": round(result.latency_ms, 3) if result else 0.0,
        "processed_at": processed_at,
        "pipeline_version": PIPELINE_VERSION,
    }


def image_row(
    ref: ObjectRef,
    *,
    status: str,
    configured: tuple[str, str],
    prompt: str,
    processed_at: str,
    processing_ms: float,
    result: DetectionResult | None = None,
    objects_found: int = 0,
    overview_uri: str | None = None,
    size: tuple[int, int] | None = None,
    error: PipelineError | None = None,
    embedding_status: str | None = None,
    embedding_error: PipelineError | None = None,
) -> dict[str, Any]:
    """The `images` row of one outcome (`error` for a failed one). `embedding_status`: how its
    crops were indexed for search (ok, failed with `embedding_error`, off, none)."""
    error_type = error.error_type if error else ("truncated_answer" if status == "partial" else None)
    common = common_fields(ref, result, configured=configured, prompt=prompt, processed_at=processed_at)
    return {
        # A different outcome or detector for the same generation (a replay) is a new fact.
        "row_id": row_id(ref.bucket, ref.name, ref.generation, "image", common["detector"], status, error_type),
        **common,
        "content_type": ref.content_type,
        "size_bytes": ref.size,
        "status": status,
        "objects_found": objects_found,
        "error_type": error_type,
        "error_message": redact(str(error))[:2000] if error else None,  # rows are read as widely as logs
        "fallback_reason": result.fallback_reason if result else None,
        "overview_uri": overview_uri,
        "image_width": size[0] if size else None,
        "image_height": size[1] if size else None,
        "embedding_status": embedding_status,
        "embedding_error": (
            redact(f"{embedding_error.error_type}: {embedding_error}")[:2000] if embedding_error else None
        ),
        "processing_ms": processing_ms,
    }


def object_row(
    ref: ObjectRef,
    index: int,
    detection: Detection,
    crop_uri: str,
    overview_uri: str,
    result: DetectionResult,
    size: tuple[int, int],
    *,
    prompt: str,
    processed_at: str,
) -> dict[str, Any]:
    """The `objects` row of detection number `index` (from 1) of an image of `size` pixels."""
    width, height = size
    box = detection.box
    return {
        "row_id": row_id(ref.bucket, ref.name, ref.generation, "object", result.detector, index),
        **common_fields(
            ref, result, configured=(result.detector, result.model), prompt=prompt, processed_at=processed_at
        ),
        "object_index": index,
        "label": detection.label,
        "output_uri": crop_uri,
        "item_color": detection.color,
        "item_gen_desc": detection.general_description,
        "item_det_desc": detection.detailed_description,
        "box_x_min": box.x_min,
        "box_y_min": box.y_min,
        "box_x_max": box.x_max,
        "box_y_max": box.y_max,
        "box_norm_x_min": round(box.x_min / width, 6),
        "box_norm_y_min": round(box.y_min / height, 6),
        "box_norm_x_max": round(box.x_max / width, 6),
        "box_norm_y_max": round(box.y_max / height, 6),
        "has_mask": detection.mask is not None,
        "overview_uri": overview_uri,
        "image_width": width,
        "image_height": height,
    }


def embedding_row(
    object_row: Mapping[str, Any],
    vector: Iterable[float],
    *,
    embedder: tuple[str, str, int],
    camera: str | None,
    seen_at: str,
    embedded_at: str,
) -> dict[str, Any]:
    """The `embeddings` row of one crop: its `objects` row's identity and descriptions beside the
    vector, so a search needs no join. `embedder`: (name, model, dimensions)."""
    name, model, dimensions = embedder
    return {
        "row_id": row_id(object_row["row_id"], "embedding", name, model, dimensions),
        "object_row_id": object_row["row_id"],
        "source_uri": object_row["source_uri"],
        "source_name": object_row["source_name"],
        "source_generation": object_row["source_generation"],
        "object_index": object_row["object_index"],
        "camera": camera,
        "seen_at": seen_at,
        "crop_uri": object_row["output_uri"],
        "label": object_row["label"],
        "item_color": object_row["item_color"],
        "item_gen_desc": object_row["item_gen_desc"],
        "item_det_desc": object_row["item_det_desc"],
        "detector": object_row["detector"],
        "embedder": name,
        "model": model,
        "dimensions": dimensions,
        "embedding": [float(value) for value in vector],
        "embedded_at": embedded_at,
        "pipeline_version": PIPELINE_VERSION,
    }
