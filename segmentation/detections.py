"""The value types that flow through the pipeline.

One result type for every detector: `Detection`, in pixel coordinates of the EXIF-corrected
original image. Normalized 0-1000 coordinates exist only inside `segmentation.parse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class ObjectRef:
    """One generation of one Cloud Storage object, as the finalize event named it."""

    bucket: str
    name: str
    generation: int | None = None
    content_type: str | None = None
    size: int | None = None
    # When this generation was created (epoch seconds, from the event), to tell how long the
    # platform has been redelivering it; None when the event does not say.
    created: float | None = None

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"

    @classmethod
    def from_uri(cls, uri: str) -> ObjectRef:
        """The live generation of gs://bucket/name; ValueError for anything else.

        >>> ObjectRef.from_uri("gs://belt/processed/a.jpg-output-0001.jpg").name
        'processed/a.jpg-output-0001.jpg'
        """
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        if not uri.startswith("gs://") or not bucket or not name:
            raise ValueError(f"{uri!r} is not a gs://bucket/object URI")
        return cls(bucket, name)


@dataclass(frozen=True)
class Box:
    """A pixel box: `x_min`/`y_min` inclusive, `x_max`/`y_max` exclusive, so width = x_max - x_min.

    >>> Box(10, 20, 110, 70).width, Box(10, 20, 110, 70).height
    (100, 50)
    """

    x_min: int
    y_min: int
    x_max: int
    y_max: int

    @property
    def width(self) -> int:
        return self.x_max - self.x_min

    @property
    def height(self) -> int:
        return self.y_max - self.y_min

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def as_tuple(self) -> tuple[int, int, int, int]:
        """(left, upper, right, lower), the order Pillow's crop and draw take."""
        return (self.x_min, self.y_min, self.x_max, self.y_max)


@dataclass(frozen=True, eq=False)
class Detection:
    """One object found in an image.

    `mask`, when the detector gave one, is a mode-"L" image exactly the size of `box`
    (255 = object, 0 = background). `score`, when the detector gave one, is its confidence
    0-1 (the offline detector does; Gemini answers carry none).
    """

    box: Box
    label: str
    color: str = ""
    general_description: str = ""
    detailed_description: str = ""
    mask: Image.Image | None = None
    score: float | None = None


@dataclass(frozen=True)
class Usage:
    """Token counts a model call reported (zeros when the detector does not bill tokens)."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class DetectionResult:
    """What a detector returns for one image.

    `partial` is True when the answer was cut off (token limit) and only the complete
    objects before the cut were kept. `fallback_reason` says why a fallback detector
    produced the result instead of the configured one (None when it did not).
    """

    detections: list[Detection]
    detector: str
    model: str = ""
    partial: bool = False
    usage: Usage = field(default_factory=Usage)
    latency_ms: float = 0.0
    fallback_reason: str | None = None
