"""What turns a crop (or a text query) into a vector: the `Embedder` interface and its makers.

Two embedders sit behind it:
- `GeminiEmbedder` (`segmentation.search.gemini_embed`): Gemini multimodal embeddings through
  google-genai; crops and text land in one space, so a description finds a photo.
- `DescriptorEmbedder`: the weight-free descriptor (`segmentation.search.descriptor`), no
  network; its text "embedding" is the colours a description names (`segmentation.search.text`).

Vectors are float32 and unit length, so cosine similarity is a dot product. Vectors of two
embedders (or of one model at two lengths) are never compared: rows carry `embedder`, `model`
and `dimensions`, and a search reads only the rows that match its embedder.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from segmentation.errors import ImageDecodeError

if TYPE_CHECKING:
    import numpy as np

    from segmentation.config import Config


class Embedder(Protocol):
    """Crops and queries to unit-length float32 vectors of length `dimensions`."""

    name: str  # the rows' `embedder`: "gemini" or "descriptor"
    model: str  # the rows' `model`: the Gemini model id, or the descriptor's version
    dimensions: int

    def embed_images(self, jpegs: Sequence[bytes], *, deadline: float) -> list[np.ndarray]:
        """One vector per JPEG, in order. Raises `TransientError` (retry until `deadline`) or
        `PermanentError` (this input can never be embedded)."""
        ...

    def embed_text(self, text: str, *, deadline: float) -> np.ndarray:
        """The vector of a description, in the same space as the crops'."""
        ...

    def close(self) -> None:
        """Release clients and connections."""
        ...


def unit(vector: np.ndarray) -> np.ndarray:
    """`vector` as float32 scaled to length 1 (a zero vector stays zero)."""
    import numpy as np

    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class DescriptorEmbedder:
    """The weight-free descriptor behind the `Embedder` interface: local, deterministic, free."""

    name = "descriptor"

    def __init__(self) -> None:
        from segmentation.search import descriptor

        self.model = descriptor.VERSION
        self.dimensions = descriptor.DIM

    def embed_images(self, jpegs: Sequence[bytes], *, deadline: float) -> list[np.ndarray]:
        from PIL import Image

        from segmentation.search.descriptor import describe

        vectors = []
        for data in jpegs:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
                    vectors.append(describe(image))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise ImageDecodeError(f"cannot read the crop to describe it: {exc}") from exc
        return vectors

    def embed_text(self, text: str, *, deadline: float) -> np.ndarray:
        from segmentation.search.text import describe_text

        return describe_text(text)

    def close(self) -> None:
        pass


def embedder_from_config(config: Config) -> Embedder | None:
    """The configured embedder (`Config.resolved_embedder`), or None when indexing is off."""
    kind = config.resolved_embedder
    if kind == "off":
        return None
    if kind == "gemini":
        from segmentation.search.gemini_embed import GeminiEmbedder

        return GeminiEmbedder(config)
    return DescriptorEmbedder()
