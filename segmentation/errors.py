"""Error classes, split by what the function must do about them.

- `TransientError`: worth retrying in-process; past the retry deadline the function raises
  so the platform redelivers the event.
- `PermanentError`: retrying cannot help; the image gets a `failed` row and one error log
  line, and the function returns normally so the event is acknowledged.

`error_type` is the short, stable name written to the `error_type` column.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error the pipeline classifies."""

    error_type = "pipeline_error"


class PermanentError(PipelineError):
    """Retrying will not help: record a failed-image row and acknowledge the event."""

    error_type = "permanent_error"


class TransientError(PipelineError):
    """A retry may help (quota, 5xx, timeout). `retry_after` is the server's hint in seconds."""

    error_type = "transient_error"

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class SuspectError(TransientError):
    """A failure retried like a transient one that may be the event's own fault: an answer the
    model's client cannot read, or an exception nobody classified. It gets a failed row on the
    first redelivery that fails again, instead of looping for the whole redelivery window."""

    error_type = "suspect_error"


class UnexpectedError(SuspectError):
    """An exception no edge classified (a bug, or a failure mode not seen before)."""

    error_type = "unexpected_error"


class UnreadableAnswerError(SuspectError):
    """The model's endpoint answered, but not with an answer its client can read: a 200 whose
    body is not JSON (or is compressed without saying so), JSON its types reject, or no
    candidates and no prompt feedback. Retried in-process like a 5xx; a redelivery after the
    retry deadline that meets it again records a failed row."""

    error_type = "unreadable_answer"


class InProgressElsewhereError(TransientError):
    """Another delivery of the same event holds the image's claim and has not finished: this copy
    is redelivered later, when the completion marker answers it."""

    error_type = "in_progress_elsewhere"


class WriteConflictError(PipelineError):
    """A conditional write lost a race: the object changed since it was read (HTTP 412).
    The caller reads it again and decides anew; neither retrying the same write nor failing
    the image is right."""

    error_type = "write_conflict"


class ImageDecodeError(PermanentError):
    """The bytes are not an image Pillow can decode (truncated, corrupt, wrong format)."""

    error_type = "image_decode_error"


class ImageTooLargeError(PermanentError):
    """The file or its pixel count exceeds the configured limits (decompression-bomb guard)."""

    error_type = "image_too_large"


class ResponseParseError(PermanentError):
    """The model's answer holds no usable detections list, even after a re-ask."""

    error_type = "response_parse_error"


class NoUsableBoxesError(ResponseParseError):
    """The answer lists objects but none has a usable box (NaN, nested arrays, zero area...):
    not an empty belt. Raised after the model was asked once more."""

    error_type = "no_usable_boxes"


class BoxScaleError(NoUsableBoxesError):
    """Every box of the answer is on a 0-1 scale instead of Gemini's 0-1000, so each would
    become a crop of a pixel or two. Refused like an answer without usable boxes."""

    error_type = "box_scale_0_1"


class UnsupportedSceneError(PermanentError):
    """The offline detector refused the frame: not a belt scene it can analyse (no belt model fits,
    or too much clutter). A failed row instead of guessed detections."""

    error_type = "unsupported_scene"


class ObjectGoneError(PermanentError):
    """The event's object generation no longer exists (deleted or overwritten before it was read)."""

    error_type = "object_gone"


class ModelRequestError(PermanentError):
    """The model rejected the request itself (bad model name, invalid argument, permission)."""

    error_type = "model_request_error"


class ModelRetiredError(ModelRequestError):
    """The configured model is past its announced retirement date and the service refused it:
    every image fails the same way until GEMINI_MODEL is changed (the message names the model to set)."""

    error_type = "model_retired"


class DetectorNotConfiguredError(PermanentError):
    """No Gemini credentials or project are configured, so no detection can run."""

    error_type = "detector_not_configured"


class UnsupportedFormatError(ImageDecodeError):
    """A recognised image format this function cannot decode (its decoder is not installed)."""

    error_type = "unsupported_format"


class ImageTooLargeForMemoryError(PermanentError):
    """Decoding or drawing the image needs more memory than the instance can give it: refused
    from its header by the decode memory budget, or a `MemoryError` while it was processed."""

    error_type = "image_too_large_for_memory"


class MemoryBudgetBusyError(TransientError):
    """Other events of this worker held the decode memory budget until the retry deadline."""

    error_type = "memory_budget_busy"
