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


class ObjectGoneError(PermanentError):
    """The event's object generation no longer exists (deleted or overwritten before it was read)."""

    error_type = "object_gone"


class ModelRequestError(PermanentError):
    """The model rejected the request itself (bad model name, invalid argument, permission)."""

    error_type = "model_request_error"


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
