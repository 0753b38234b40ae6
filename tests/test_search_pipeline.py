"""Lost-bag search on the in-memory seams: `MemoryStorage`, the real SQLite sink and vector store,
the weight-free descriptor and a detector that knows where the generated bags are.

An image's crops are indexed as it is processed (or the image row says why not); a query under
search/ (a photo, a .txt, a .json with filters) gets a results file, a contact sheet and match
rows whose first match is the right bag; a redelivered query is a no-op; a bad one is answered
with a failed results file."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from segmentation.config import Config
from segmentation.detections import Box, Detection, DetectionResult, ObjectRef
from segmentation.errors import ResponseParseError, TransientError
from segmentation.function import build_search
from segmentation.images import ModelInput
from segmentation.memory_storage import MemoryStorage
from segmentation.pipeline import Pipeline
from segmentation.search.backfill import fill_pending
from segmentation.search.embedders import DescriptorEmbedder
from segmentation.search.query import Query
from segmentation.search.service import SearchService
from segmentation.sink import SqliteSink
from tools.bag_views import Bag, bag, view

BUCKET = "belt"
NOW = "2026-12-05T12:00:00+00:00"


class KnownBoxes:
    """Answers the boxes the test pasted bags at, per image name (a stand-in for Gemini)."""

    name = "gemini"

    def __init__(self) -> None:
        self.boxes: list[tuple[int, int, int, int]] = []

    def detect(self, model_input: ModelInput, image_size: tuple[int, int], *, deadline: float) -> DetectionResult:
        detections = [Detection(Box(*box), label="suitcase", color="mixed") for box in self.boxes]
        return DetectionResult(detections, detector="gemini", model="gemini-test")

    def close(self) -> None:
        pass


class FailingEmbedder(DescriptorEmbedder):
    """The descriptor that always answers 503 (an embedding service outage)."""

    def embed_images(self, jpegs: Sequence[bytes], *, deadline: float) -> list[np.ndarray]:
        raise TransientError("embedding service unavailable (503)")


def distinct_bags(count: int) -> list[Bag]:
    """The first bags of the tuning split with a base colour no earlier one has."""
    chosen: dict[str, Bag] = {}
    ident = 0
    while len(chosen) < count:
        candidate = bag("tuning", ident)
        chosen.setdefault(candidate.colour, candidate)
        ident += 1
    return list(chosen.values())


def belt_photo(bags: Sequence[Bag], seed: int) -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """A grey belt with one view of each bag side by side, and the bags' boxes."""
    views = [view(b, seed, occlude=0.0) for b in bags]
    height = max(v.height for v in views) + 40
    width = sum(v.width for v in views) + 20 * (len(views) + 1)
    canvas = Image.new("RGB", (width, height), (92, 94, 96))
    boxes, x = [], 20
    for item in views:
        canvas.paste(item, (x, 20))
        boxes.append((x, 20, x + item.width, 20 + item.height))
        x += item.width + 20
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=92)
    return out.getvalue(), boxes


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


class World:
    """A configured pipeline and search service over one in-memory bucket and one SQLite file."""

    def __init__(self, tmp_path: Path, embedder: DescriptorEmbedder | None = None, **env: str):
        settings = {"SQLITE_PATH": str(tmp_path / "rows.sqlite"), "RETRY_DEADLINE_S": "3", "EMBEDDER": "descriptor"}
        self.config = Config.from_env({**settings, **env})
        self.storage = MemoryStorage(buckets=[BUCKET])
        self.sink = SqliteSink(self.config.sqlite_path)
        self.detector = KnownBoxes()
        self.pipeline = Pipeline(
            self.config,
            storage=self.storage,
            sink=self.sink,
            detector=self.detector,
            embedder=embedder if embedder is not None else DescriptorEmbedder(),
        )
        self.search: SearchService = build_search(self.pipeline)

    def upload(self, name: str, data: bytes, content_type: str = "image/jpeg") -> ObjectRef:
        self.storage.write(BUCKET, name, data, content_type=content_type)
        return ObjectRef(BUCKET, name, self.storage.live_generation(BUCKET, name), content_type, len(data))

    def process_belt(self, name: str, bags: Sequence[Bag], seed: int) -> None:
        data, self.detector.boxes = belt_photo(bags, seed)
        assert self.pipeline.process(self.upload(name, data)).status == "ok"

    def results(self, name: str) -> dict[str, Any]:
        return json.loads(self.storage.read(ObjectRef(BUCKET, name), max_bytes=10**7))


@pytest.fixture
def bags() -> list[Bag]:
    return distinct_bags(6)


def test_every_crop_is_indexed_beside_its_object_row(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path)
    world.process_belt("raw/cam1/t1.jpg", bags[:3], seed=1)

    objects = world.sink.rows("objects")
    embeddings = world.sink.rows("embeddings")
    (image,) = world.sink.rows("images")
    assert image["embedding_status"] == "ok" and image["embedding_error"] is None
    assert [row["object_row_id"] for row in embeddings] == [row["row_id"] for row in objects]
    assert [row["crop_uri"] for row in embeddings] == [row["output_uri"] for row in objects]
    assert {row["camera"] for row in embeddings} == {"cam1"}
    for row in embeddings:
        vector = np.array(row["embedding"])
        assert row["embedder"] == "descriptor" and row["dimensions"] == len(vector)
        assert abs(np.linalg.norm(vector) - 1) < 1e-4


def test_an_embedding_outage_keeps_the_objects_and_says_so(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path, embedder=FailingEmbedder())
    world.process_belt("raw/cam1/t1.jpg", bags[:2], seed=1)

    (image,) = world.sink.rows("images")
    assert image["status"] == "ok" and image["objects_found"] == 2
    assert len(world.sink.rows("objects")) == 2
    assert world.sink.rows("embeddings") == []
    assert image["embedding_status"] == "failed"
    assert "503" in image["embedding_error"]


def test_indexing_switched_off_is_recorded(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path, EMBEDDER="off")
    world.pipeline.embedder = None
    world.process_belt("raw/cam1/t1.jpg", bags[:2], seed=1)

    (image,) = world.sink.rows("images")
    assert image["embedding_status"] == "off"
    assert world.sink.rows("embeddings") == []


def test_a_query_photo_finds_its_bag_first(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path)
    world.process_belt("raw/cam1/t1.jpg", bags[:3], seed=1)
    world.process_belt("raw/cam2/t2.jpg", bags[3:], seed=2)
    target = bags[4]

    outcome = world.search.process(world.upload("search/lost-17.jpg", jpeg(view(target, 9, where="photo"))))

    assert outcome.status == "ok"
    document = world.results("search-results/lost-17.jpg.json")
    best = document["matches"][0]
    assert best["camera"] == "cam2"
    assert best["crop_uri"] == world.sink.rows("objects")[4]["output_uri"]
    assert [match["rank"] for match in document["matches"]] == list(range(1, 7))
    scores = [match["score"] for match in document["matches"]]
    assert scores == sorted(scores, reverse=True)
    rows = world.sink.rows("search_matches")
    assert [(row["rank"], row["crop_uri"]) for row in rows] == [(m["rank"], m["crop_uri"]) for m in document["matches"]]
    assert {row["query_kind"] for row in rows} == {"photo"}
    sheet = Image.open(
        io.BytesIO(world.storage.read(ObjectRef(BUCKET, "search-results/lost-17.jpg.jpg"), max_bytes=10**7))
    )
    assert sheet.format == "JPEG" and sheet.width > 0


def test_a_redelivered_query_is_a_no_op(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path)
    world.process_belt("raw/cam1/t1.jpg", bags[:3], seed=1)
    ref = world.upload("search/q.jpg", jpeg(view(bags[0], 9, where="photo")))

    assert world.search.process(ref).status == "ok"
    assert world.search.process(ref).status == "duplicate"
    assert len(world.sink.rows("search_matches")) == 3


def test_json_filters_narrow_the_search(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path)
    world.process_belt("raw/cam1/t1.jpg", bags[:3], seed=1)
    world.process_belt("raw/cam2/t2.jpg", bags[3:], seed=2)
    world.upload("search/p.jpg", jpeg(view(bags[0], 9, where="photo")))
    query = json.dumps({"photo": "search/p.jpg", "camera": "cam2", "top": 2})

    outcome = world.search.process(world.upload("search/q.json", query.encode(), "application/json"))

    assert outcome.status == "ok"
    document = world.results("search-results/q.json.json")
    assert [match["camera"] for match in document["matches"]] == ["cam2", "cam2"]
    assert document["query"]["filters"] == {"camera": "cam2"}


@pytest.mark.parametrize(
    ("name", "body", "error_type"),
    [
        ("search/bad.json", b"{not json", "bad_query"),
        ("search/empty.txt", b"   ", "bad_query"),
        ("search/unknown.json", b'{"text": "red", "colour_of_sky": "blue"}', "bad_query"),
        ("search/broken.jpg", b"\xff\xd8 not really a jpeg", "image_decode_error"),
    ],
)
def test_a_bad_query_gets_a_failed_results_file(tmp_path: Path, name: str, body: bytes, error_type: str) -> None:
    world = World(tmp_path)
    content_type = "image/jpeg" if name.endswith(".jpg") else "text/plain"

    outcome = world.search.process(world.upload(name, body, content_type))

    assert outcome.status == "failed"
    document = world.results(f"search-results/{name.removeprefix('search/')}.json")
    assert document["status"] == "failed" and document["error_type"] == error_type
    assert world.sink.rows("search_matches") == []


def test_search_when_indexing_is_off_answers_why(tmp_path: Path) -> None:
    world = World(tmp_path, EMBEDDER="off")
    world.pipeline.embedder = None
    world.search = build_search(world.pipeline)

    outcome = world.search.process(world.upload("search/q.txt", b"red suitcase", "text/plain"))

    assert outcome.status == "failed"
    assert world.results("search-results/q.txt.json")["error_type"] == "search_off"


def test_embeddings_left_pending_are_filled_in_later_once(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path, embedder=FailingEmbedder())
    world.process_belt("raw/cam1/t1.jpg", bags[:3], seed=1)
    pending = "processed-markers/cam1/t1.jpg.embeddings-pending.json"
    assert world.storage.metadata(BUCKET, pending) is not None

    fill = {"bucket": BUCKET, "markers_prefix": "processed-markers/", "deadline": time.monotonic() + 1}
    assert fill_pending(world.storage, world.sink, FailingEmbedder(), now=NOW, **fill) == {"retry-later": 1}
    fill["deadline"] = time.monotonic() + 5
    assert world.sink.rows("embeddings") == [] and world.storage.metadata(BUCKET, pending) is not None

    assert fill_pending(world.storage, world.sink, DescriptorEmbedder(), now=NOW, **fill) == {"filled": 1}
    objects = world.sink.rows("objects")
    embeddings = world.sink.rows("embeddings")
    assert [row["object_row_id"] for row in embeddings] == [row["row_id"] for row in objects]
    assert {row["camera"] for row in embeddings} == {"cam1"}
    assert world.storage.metadata(BUCKET, pending) is None
    assert fill_pending(world.storage, world.sink, DescriptorEmbedder(), now=NOW, **fill) == {}

    # The filled-in vectors are the ones indexing would have stored: the photo finds its bag.
    world.pipeline.embedder = DescriptorEmbedder()
    world.search = build_search(world.pipeline)
    outcome = world.search.process(world.upload("search/q.jpg", jpeg(view(bags[1], 9, where="photo"))))
    assert outcome.matches[0].candidate.object_row_id == objects[1]["row_id"]


def test_a_description_finds_the_bag_of_its_colour(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path)
    world.process_belt("raw/cam1/t1.jpg", bags[:3], seed=1)
    world.process_belt("raw/cam2/t2.jpg", bags[3:], seed=2)
    target = next(b for b in bags if b.colour == "red")

    outcome = world.search.process(
        world.upload("search/q.txt", f"{target.colour} {target.kind}".encode(), "text/plain")
    )

    document = world.results("search-results/q.txt.json")
    assert outcome.status == "ok" and document["query"]["kind"] == "text"
    index = bags.index(target)
    assert document["matches"][0]["crop_uri"] == world.sink.rows("objects")[index]["output_uri"]
    assert {row["query_text"] for row in world.sink.rows("search_matches")} == {f"{target.colour} {target.kind}"}


def phone_photo(target: Bag, others: Sequence[Bag]) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A passenger's photo: the bag among other things on a floor, and the bag's box."""
    bag_view = view(target, 9, where="photo", occlude=0.0)
    clutter = [view(other, 11, where="photo", occlude=0.0) for other in others]
    width = bag_view.width + sum(item.width for item in clutter) + 40
    height = max([bag_view.height, *(item.height for item in clutter)]) + 40
    photo = Image.new("RGB", (width, height), (150, 140, 120))
    photo.paste(bag_view, (20, 20))
    x = 20 + bag_view.width
    for item in clutter:
        photo.paste(item, (x, 20))
        x += item.width
    return photo, (20, 20, 20 + bag_view.width, 20 + bag_view.height)


class FoundAt(KnownBoxes):
    """A detector that finds the given boxes in any photo (a stand-in for Gemini on the query photo)."""

    def __init__(self, boxes: list[tuple[int, int, int, int]]) -> None:
        super().__init__()
        self.boxes = boxes


def test_the_bag_in_a_query_photo_is_searched_for_not_the_whole_photo(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path)
    world.process_belt("raw/cam1/t1.jpg", bags, seed=1)
    target, others = bags[2], [bags[0], bags[5]]
    photo, box = phone_photo(target, others)
    searcher = world.search.searcher
    assert searcher is not None
    smaller = (box[0] + 5, box[1] + 5, box[2] - 5, box[3] - 5)  # the largest detection is the one searched for
    searcher.detector = FoundAt([smaller, box])

    found = searcher.search(Query(photo="p.jpg"), photo, top=3, deadline=time.monotonic() + 5)

    assert found.query_box == box
    assert found.matches[0].candidate.object_row_id == world.sink.rows("objects")[2]["row_id"]


def test_a_re_rank_reorders_and_a_failed_one_keeps_the_embedding_order(tmp_path: Path, bags: list[Bag]) -> None:
    world = World(tmp_path)
    world.process_belt("raw/cam1/t1.jpg", bags, seed=1)
    searcher = world.search.searcher
    assert searcher is not None
    photo = view(bags[0], 9, where="photo")
    plain = searcher.search(Query(photo="p.jpg"), photo, top=6, deadline=time.monotonic() + 5)
    seen: list[int] = []

    def reverse(query: bytes, crops: Sequence[bytes], deadline: float) -> list[float]:
        seen.append(len(crops))
        return [index / len(crops) for index in range(len(crops))]  # the last candidate scores best

    searcher.reranker = reverse
    reranked = searcher.search(Query(photo="p.jpg"), photo, top=3, deadline=time.monotonic() + 5)

    assert seen == [6]  # every candidate (at most 20) was shown to the re-ranker
    assert [m.candidate.object_row_id for m in reranked.matches] == [
        m.candidate.object_row_id for m in plain.matches[::-1][:3]
    ]
    assert [m.rank for m in reranked.matches] == [1, 2, 3]
    assert reranked.matches[0].rerank_score == round(5 / 6, 4)

    def broken(query: bytes, crops: Sequence[bytes], deadline: float) -> list[float]:
        raise ResponseParseError("the re-rank answer was not JSON")

    searcher.reranker = broken
    kept = searcher.search(Query(photo="p.jpg"), photo, top=3, deadline=time.monotonic() + 5)
    assert [m.candidate for m in kept.matches] == [m.candidate for m in plain.matches[:3]]
    assert kept.rerank_error is not None and "not JSON" in kept.rerank_error
