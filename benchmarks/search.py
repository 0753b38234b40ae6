"""Lost-bag search benchmarks (issue 18) on this machine; prints Markdown tables.

Run from the repository root (about five minutes on two cores, half of it the store section)::

    .venv/bin/python benchmarks/search.py                       # everything
    .venv/bin/python benchmarks/search.py --quick               # small sizes, few repetitions
    .venv/bin/python benchmarks/search.py --section store       # one section (repeatable)

Sections: machine, descriptor, gemini, store, searcher. The results of one full run, with
interpretation, are in BENCHMARKS.md ("Lost-bag search"); the method is in docs/benchmarks.md.

Nothing here talks to Google. Cloud Storage is the threaded in-memory stand-in in a process of
its own (`benchmarks/storage_server.py`, as `bench.per_image_samples(storage="own-process")`),
rows go to SQLite (`SqliteSink`) in a temporary directory, and Gemini is
`devtools.standins.gemini_server` in a process of its own (`benchmarks/gemini_process.py`):
detection answers at once with a grid of boxes (`bench.gemini_answer`), embedding answers wait a
set latency. The real embedding service's latency cannot be measured from here, so the Gemini
rows are given at several latencies and the time beyond them is what this machine adds.

Side-by-side variants (EMBEDDER=off against descriptor or gemini, the two backends, the two
filters) run interleaved in one run, in a rotating order, repeated; tables give the median and
p90 (nearest rank) of the repetitions. The machine is a shared 2-vCPU VM: each section prints
the load average at its start and end.

Tables:

1a. `DescriptorEmbedder.embed_images` on the crops of a 1920x1080 photo with 1, 5, 10, 25 objects
    (the crops the pipeline cuts, `render.crop_jpeg`), in process: ms per image and per crop.
1b. The whole pipeline (`Pipeline.process`, warm, as `bench.per_image_samples` builds it, plus
    the configured embedder as `function.build_pipeline` adds it) per image with EMBEDDER=off and
    EMBEDDER=descriptor on the same photos, interleaved: wall, the phases around the indexing,
    and the added time as the median of the paired differences.
2a. `GeminiEmbedder.embed_images` against the stand-in at 0, 150 and 400 ms per embedding call:
    the api-key backend (one batchEmbedContents per image) beside the vertex backend (one
    embedContent per crop, at most EMBED_CONCURRENCY at once), for 1, 5, 10, 25 crops.
2b. The pipeline per image with EMBEDDER=off and EMBEDDER=gemini at 150 ms, on both backends:
    indexing is submitted to the upload threads, so it waits beside the uploads and the rows.
3.  `SqliteVectorStore.nearest` on a `SqliteSink` file of 10^3 .. 3x10^5 `embeddings` rows
    (`rows.embedding_row`, random unit vectors) of length 373 (the descriptor) and 768 (Gemini's
    default), with no filter and with a camera filter (one camera in ten), in a fresh interpreter
    per file: median / p90 ms, peak RSS of a search (VmHWM reset before each call), file size.
4.  `Searcher.search` for one photo query (and one description) against 10^4 rows: the photo's
    thumbnail and JPEG, the embedding, the lookup.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench  # noqa: E402  (after the path is set, as the script runs from anywhere)
from benchmarks.bench import markdown_table, med_p90, ms  # noqa: E402

if TYPE_CHECKING:
    from segmentation.pipeline import Pipeline
    from segmentation.sink import SqliteSink

SIZE = (1920, 1080)
CROP_COUNTS = (1, 5, 10, 25)
LATENCIES_S = (0.0, 0.15, 0.4)
PIPELINE_LATENCY_S = 0.15
STORE_SIZES = (1_000, 10_000, 100_000, 300_000)
STORE_DIMENSIONS = (373, 768)
CAMERAS = 10  # rows are spread evenly over this many cameras: a camera filter keeps one in ten
TOP_K = 10
API_KEY = "bench-search-key"
GEMINI_MODEL = "gemini-embedding-2"
RESULT_PREFIX = "SEARCH-BENCH-RESULT "
TEXT_QUERY = "dark green hard-shell suitcase with a yellow ribbon"


# --- small helpers ---------------------------------------------------------------------------


def rotated(items: Sequence[Any], index: int) -> list[Any]:
    """`items` starting at `index` (mod len): each variant goes first as often as the others."""
    shift = index % len(items)
    return [*items[shift:], *items[:shift]]


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def med(values: Sequence[float]) -> str:
    return ms(statistics.median(values))


def size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20


def decoded(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


_crops: dict[tuple[int, int], list[bytes]] = {}


def crops_of(count: int, variant: int) -> list[bytes]:
    """The crop JPEGs the pipeline cuts from 1920x1080 photo `variant` (of 4) with `count` boxes."""
    from segmentation.parse import parse_response
    from segmentation.render import crop_jpeg

    key = (count, variant % 4)
    if key not in _crops:
        image = decoded(bench.photo(*SIZE, key[1]))
        detections = parse_response(bench.gemini_answer(count), SIZE, max_objects=25).detections
        _crops[key] = [crop_jpeg(image, detection) for detection in detections]
    return _crops[key]


def timed(work: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """(wall ms, process CPU ms, result) of `work(*args, **kwargs)`."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work(*args, **kwargs)
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000, result


# --- the Gemini stand-in in its own process -------------------------------------------------------


@dataclasses.dataclass
class GeminiStandIn:
    """`benchmarks/gemini_process.py` running: its base URL and its stdin commands."""

    process: subprocess.Popen
    url: str

    def command(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def set_latency(self, seconds: float) -> None:
        if self.command(f"latency {seconds}") != "OK":
            raise RuntimeError("the Gemini stand-in did not take the latency")

    def stats(self) -> dict[str, Any]:
        """The requests since the last call: embedding_requests, embedded_contents, detection_requests."""
        return json.loads(self.command("stats"))


@contextlib.contextmanager
def gemini_process(objects: int = 10) -> Iterator[GeminiStandIn]:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.gemini_process", "--objects", str(objects)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"the Gemini stand-in did not start: {line!r}")
        yield GeminiStandIn(process, line.split()[1])
    finally:
        if process.stdin is not None:
            process.stdin.close()  # EOF: it stops serving and exits
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def backend_settings(backend: str) -> dict[str, str]:
    if backend == "vertex":
        return {"GOOGLE_CLOUD_PROJECT": "bench-project", "GOOGLE_CLOUD_LOCATION": "global"}
    return {"GEMINI_API_KEY": API_KEY}


def credentials_for(backend: str) -> Any:
    """A fixed bearer token on Vertex AI (the stand-in checks that one is sent), None otherwise."""
    if backend != "vertex":
        return None
    from google.oauth2.credentials import Credentials

    return Credentials(token="bench-token")


def gemini_embedder(backend: str) -> Any:
    from segmentation.config import Config
    from segmentation.search.gemini_embed import GeminiEmbedder

    return GeminiEmbedder(Config.from_env(backend_settings(backend)), credentials=credentials_for(backend))


# --- 1a. the descriptor in process ------------------------------------------------------------------


def descriptor_samples(counts: Sequence[int], images: int) -> dict[int, list[tuple[float, float, float]]]:
    """count -> (wall ms, CPU ms, decoding-only ms) per image: `DescriptorEmbedder.embed_images` on
    one photo's crops, and decoding the same crops alone (the part of it that is JPEG decoding)."""
    from segmentation.search.embedders import DescriptorEmbedder

    embedder = DescriptorEmbedder()
    embedder.embed_images(crops_of(counts[0], 0), deadline=math.inf)  # first-use imports, not measured
    samples: dict[int, list[tuple[float, float, float]]] = {count: [] for count in counts}
    for index in range(images):
        for count in rotated(counts, index):
            crops = crops_of(count, index)
            wall, cpu, vectors = timed(embedder.embed_images, crops, deadline=math.inf)
            assert len(vectors) == count and vectors[0].shape == (embedder.dimensions,)
            decoding, _, _ = timed(list, map(decoded, crops))
            samples[count].append((wall, cpu, decoding))
    return samples


def descriptor_section(counts: Sequence[int] = CROP_COUNTS, images: int = 20) -> str:
    started = load()
    samples = descriptor_samples(counts, images)
    rows = []
    for count in counts:
        walls = [wall for wall, _, _ in samples[count]]
        crops = crops_of(count, 0)
        rows.append(
            (
                count,
                f"{statistics.mean(len(c) for c in crops) / 1024:.0f}",
                _crop_side(crops),
                f"**{med_p90(walls)}**",
                med([cpu for _, cpu, _ in samples[count]]),
                med([decoding for _, _, decoding in samples[count]]),
                f"**{med_p90([wall / count for wall in walls])}**",
            )
        )
    table = markdown_table(
        (
            "objects",
            "crop JPEG KiB (mean)",
            "crop size (first)",
            "ms / image",
            "CPU ms / image",
            "of which decoding the crops",
            "ms / crop",
        ),
        rows,
    )
    return (
        f"## S1a. Descriptor indexing in process (ms, median / p90 of {images} images)\n\n"
        "`DescriptorEmbedder.embed_images` on the crops the pipeline cuts from one 1920x1080 photo "
        "(quality 90 crops of a grid of boxes, `bench.gemini_answer`): each crop is decoded, its "
        'longest side resized to 80 px and described. The counts run interleaved. "of which '
        'decoding": the same crops only decoded (`Image.open` + `load`), timed separately. Load average '
        f"(1, 5, 15 min) at the start: {started}; at the end: {load()}.\n\n{table}"
    )


def _crop_side(crops: Sequence[bytes]) -> str:
    width, height = decoded(crops[0]).size
    return f"{width}x{height}"


# --- 1b / 2b. the pipeline with and without indexing -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    """One pipeline configuration of a comparison: EMBEDDER and the Gemini backend."""

    embedder: str
    backend: str = "api-key"

    @property
    def label(self) -> str:
        return self.embedder if self.backend == "api-key" else f"{self.embedder} ({self.backend})"


@dataclasses.dataclass
class ImageSample:
    """One image through `Pipeline.process`: wall and process CPU ms, phases, outcome."""

    wall_ms: float
    cpu_ms: float
    timings: dict[str, float]
    status: str
    objects: int


@dataclasses.dataclass
class Comparison:
    """Samples per variant label, per round (same photos, same order of images in every variant),
    and what the sink holds afterwards per variant: embeddings rows and image rows' embedding_status."""

    samples: dict[str, list[list[ImageSample]]]
    embedding_rows: dict[str, int]
    embedding_statuses: dict[str, list[str]]
    calls: dict[str, Any]


def build_pipeline(variant: Variant, storage_client: Any, sink: SqliteSink) -> Pipeline:
    """The pipeline `function.build_pipeline` makes for the variant's settings (no offline detector,
    as in bench.per_image_samples), on the benchmark's storage client and SQLite file."""
    from segmentation.config import Config
    from segmentation.gemini import GeminiDetector
    from segmentation.pipeline import Pipeline
    from segmentation.search.embedders import embedder_from_config
    from segmentation.search.gemini_embed import GeminiEmbedder
    from segmentation.storage import GcsStorage

    settings = {
        "SQLITE_PATH": str(sink.path),
        "GEMINI_MAX_OBJECTS": "25",
        "EMBEDDER": variant.embedder,
        **backend_settings(variant.backend),
    }
    config = Config.from_env(settings)
    credentials = credentials_for(variant.backend)
    embedder = (
        GeminiEmbedder(config, credentials=credentials)
        if variant.embedder == "gemini"
        else embedder_from_config(config)
    )
    return Pipeline(
        config,
        storage=GcsStorage(storage_client),
        sink=sink,
        detector=GeminiDetector(config, credentials=credentials),
        embedder=embedder,
    )


def process_image(pipeline: Pipeline, ref: Any) -> ImageSample:
    with bench.quiet_stdout():
        wall, cpu, outcome = timed(pipeline.process, ref)
    return ImageSample(wall, cpu, outcome.timings_ms, outcome.status, outcome.objects_found)


def compare_pipelines(
    variants: Sequence[Variant],
    *,
    objects: int,
    images: int,
    rounds: int,
    embed_latency_s: float = 0.0,
    warmup: int = 2,
) -> Comparison:
    """`rounds` x `images` 1920x1080 photos through each variant's warm pipeline, interleaved (for
    each photo every variant in a rotating order), after `warmup` photos each."""
    from segmentation.sink import SqliteSink

    with (
        gemini_process(objects) as gemini,
        tempfile.TemporaryDirectory(prefix="bench-search-") as tmp,
        bench.environ(
            {
                "GOOGLE_GEMINI_BASE_URL": gemini.url,
                "GOOGLE_VERTEX_BASE_URL": gemini.url,
                "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA": "true",
            }
        ),
        bench.own_process_storage() as emulator,
    ):
        gemini.set_latency(embed_latency_s)
        sinks = {variant.label: SqliteSink(Path(tmp) / f"{i}.sqlite") for i, variant in enumerate(variants)}
        pipelines = {v.label: build_pipeline(v, emulator.client, sinks[v.label]) for v in variants}
        samples: dict[str, list[list[ImageSample]]] = {v.label: [] for v in variants}
        counter = 0
        for round_ in range(rounds):
            for label in samples:
                samples[label].append([])
            for index in range(-warmup if round_ == 0 else 0, images):
                data = bench.photo(*SIZE, index)
                for variant in rotated(variants, counter):
                    name = f"raw/cam-1/{objects}/{counter:04d}-{variant.embedder}-{variant.backend}.jpg"
                    sample = process_image(pipelines[variant.label], emulator.upload(name, data).ref())
                    if index >= 0:
                        samples[variant.label][round_].append(sample)
                counter += 1
        calls = gemini.stats()
        embedding_rows, statuses = {}, {}
        for variant in variants:
            pipeline, sink = pipelines[variant.label], sinks[variant.label]
            embedding_rows[variant.label] = len(sink.rows("embeddings"))
            statuses[variant.label] = sorted({row["embedding_status"] for row in sink.rows("images")})
            pipeline.detector.close()
            if pipeline.embedder is not None:
                pipeline.embedder.close()
            pipeline.executor.shutdown(wait=True)
    return Comparison(samples, embedding_rows, statuses, calls)


def comparison_table(comparison: Comparison, baseline: str) -> str:
    """One row per variant: wall, CPU, the phases around indexing, and the paired differences to `baseline`."""
    rows = []
    base = comparison.samples[baseline]
    for label, rounds in comparison.samples.items():
        flat = [sample for round_ in rounds for sample in round_]
        diffs = [
            s.wall_ms - b.wall_ms for r, b_r in zip(rounds, base, strict=True) for s, b in zip(r, b_r, strict=True)
        ]
        round_medians = [
            statistics.median(s.wall_ms - b.wall_ms for s, b in zip(r, b_r, strict=True))
            for r, b_r in zip(rounds, base, strict=True)
        ]
        bad = sum(1 for s in flat if s.status != "ok")
        rows.append(
            (
                label,
                len(flat) if not bad else f"{len(flat)} ({bad} not ok)",
                med_p90([s.wall_ms for s in flat]),
                med_p90([s.cpu_ms for s in flat]),
                med_p90([s.timings.get("write", 0.0) for s in flat]),
                med_p90([s.timings.get("insert", 0.0) for s in flat]),
                med_p90([s.timings.get("index", 0.0) for s in flat]),
                "-" if label == baseline else f"**{med_p90(diffs)}**",
                "-" if label == baseline else " / ".join(ms(m) for m in round_medians),
                comparison.embedding_rows[label],
                ", ".join(comparison.embedding_statuses[label]),
            )
        )
    return markdown_table(
        (
            "EMBEDDER",
            "images",
            "wall",
            "CPU",
            "write",
            "insert",
            "index",
            "added vs off (paired)",
            "added, median per round",
            "embeddings rows (with warm-up)",
            "embedding_status",
        ),
        rows,
        "l",
    )


def pipeline_descriptor_section(objects: Sequence[int] = (1, 10, 25), images: int = 10, rounds: int = 3) -> str:
    started = load()
    parts = []
    for count in objects:
        comparison = compare_pipelines(
            [Variant("off"), Variant("descriptor")], objects=count, images=images, rounds=rounds
        )
        parts.append(f"{count} object(s) per photo:\n\n{comparison_table(comparison, 'off')}")
    return (
        f"## S1b. Pipeline per image, EMBEDDER=off vs descriptor (ms, median / p90 of {rounds} x {images} images)\n\n"
        "`Pipeline.process` on a warm pipeline, 1920x1080 photos; storage stand-in in its own process, "
        "SQLite sink, Gemini stand-in (detection at once) in its own process. The two pipelines take "
        'turns on the same photos. "write": the uploads; "insert": the object and image rows; '
        '"index": waiting for the embeddings (computed on an upload thread while the uploads run) '
        'and inserting their rows. "added vs off": median / p90 of the per-photo differences of wall '
        "time to the off pipeline's run of the same photo. CPU is this process's (the stand-ins' "
        f"is not counted). Load average at the start: {started}; at the end: {load()}.\n\n" + "\n\n".join(parts)
    )


# --- 2a. Gemini embeddings against the stand-in --------------------------------------------------------


def gemini_embed_samples(
    latencies: Sequence[float], counts: Sequence[int], repeats: int
) -> dict[tuple[float, str, int], dict[str, Any]]:
    """(latency, backend, crops) -> wall ms of each `embed_images` call and the calls it made."""
    backends = ("api-key", "vertex")
    cells: dict[tuple[float, str, int], dict[str, Any]] = {}
    with (
        gemini_process(1) as gemini,
        bench.environ({"GOOGLE_GEMINI_BASE_URL": gemini.url, "GOOGLE_VERTEX_BASE_URL": gemini.url}),
    ):
        embedders = {backend: gemini_embedder(backend) for backend in backends}
        for embedder in embedders.values():  # clients built, connections open: not measured
            embedder.embed_images(crops_of(1, 0), deadline=time.monotonic() + 30)
        gemini.stats()
        try:
            for latency in latencies:
                gemini.set_latency(latency)
                order = [(backend, count) for count in counts for backend in backends]
                for index in range(repeats):
                    for backend, count in rotated(order, index):
                        crops = crops_of(count, index)
                        embedder = embedders[backend]
                        wall, cpu, vectors = timed(embedder.embed_images, crops, deadline=time.monotonic() + 60)
                        assert len(vectors) == count
                        stats = gemini.stats()
                        cell = cells.setdefault(
                            (latency, backend, count), {"wall": [], "cpu": [], "calls": set(), "contents": set()}
                        )
                        cell["wall"].append(wall)
                        cell["cpu"].append(cpu)
                        cell["calls"].add(stats["embedding_requests"])
                        cell["contents"].add(stats["embedded_contents"])
        finally:
            for embedder in embedders.values():
                embedder.close()
    return cells


def rounds_of(backend: str, count: int) -> int:
    """Round trips one image's embedding takes one after another: one batch call on the Developer
    API; on Vertex AI one call per crop, EMBED_CONCURRENCY at once."""
    from segmentation.search.gemini_embed import EMBED_CONCURRENCY, MAX_BATCH

    return math.ceil(count / MAX_BATCH) if backend == "api-key" else math.ceil(count / EMBED_CONCURRENCY)


def gemini_section(
    latencies: Sequence[float] = LATENCIES_S, counts: Sequence[int] = CROP_COUNTS, repeats: int = 7
) -> str:
    started = load()
    cells = gemini_embed_samples(latencies, counts, repeats)
    rows = []
    for latency in latencies:
        for count in counts:
            row: list[Any] = [f"{latency * 1000:.0f}", count]
            for backend in ("api-key", "vertex"):
                cell = cells[(latency, backend, count)]
                beyond = [wall - 1000 * latency * rounds_of(backend, count) for wall in cell["wall"]]
                calls = "/".join(str(c) for c in sorted(cell["calls"]))
                row += [calls, f"**{med_p90(cell['wall'])}**", med_p90(beyond), med(cell["cpu"])]
            rows.append(row)
    table = markdown_table(
        (
            "latency ms",
            "crops",
            "api-key calls",
            "api-key ms / image",
            "api-key beyond latency",
            "api-key CPU",
            "vertex calls",
            "vertex ms / image",
            "vertex beyond latency",
            "vertex CPU",
        ),
        rows,
    )
    return (
        f"## S2a. Gemini embedding per image against the stand-in (ms, median / p90 of {repeats})\n\n"
        "`GeminiEmbedder.embed_images` (google-genai, warm client) on one 1920x1080 photo's crops; the "
        "stand-in (its own process) answers every embedding call after the latency in the first "
        "column. The latency of Google's service cannot be measured from here: read a row at the "
        'latency you expect. "calls": embedding requests the stand-in received per image. "beyond '
        'latency": the wall time minus the latency times the round trips that must follow each '
        "other (api-key: one batch; vertex: one round per 8 crops, `EMBED_CONCURRENCY`): what this "
        "machine adds (the request's base64 and JSON, the client, the loopback HTTP and the "
        "stand-in's parsing, which shares the machine). \"CPU\": this process's CPU time per image "
        "(the client's work; the stand-in's is not counted). The stand-in answers one fixed vector "
        f"(no vector to compute). Load average at the start: {started}; at the end: "
        f"{load()}.\n\n{table}"
    )


def pipeline_gemini_section(latency_s: float = PIPELINE_LATENCY_S, images: int = 10, rounds: int = 3) -> str:
    started = load()
    variants = [Variant("off"), Variant("gemini"), Variant("off", "vertex"), Variant("gemini", "vertex")]
    comparison = compare_pipelines(variants, objects=10, images=images, rounds=rounds, embed_latency_s=latency_s)
    api_key = Comparison(
        {k: v for k, v in comparison.samples.items() if "vertex" not in k},
        comparison.embedding_rows,
        comparison.embedding_statuses,
        comparison.calls,
    )
    vertex = Comparison(
        {k: v for k, v in comparison.samples.items() if "vertex" in k},
        comparison.embedding_rows,
        comparison.embedding_statuses,
        comparison.calls,
    )
    calls = comparison.calls
    return (
        f"## S2b. Pipeline per image, EMBEDDER=off vs gemini at {latency_s * 1000:.0f} ms "
        f"(ms, median / p90 of {rounds} x {images} images)\n\n"
        "As S1b (1920x1080, 10 objects), the four pipelines taking turns on the same photos; the Gemini "
        f"stand-in answers detection at once and every embedding call after {latency_s * 1000:.0f} ms. "
        "The embedding of an image's crops is submitted to the upload threads as soon as the crops are "
        'cut, so it waits beside the uploads and the object rows; "index" is what is left of it after '
        f"them. Embedding calls received in all (warm-up included): {calls['embedding_requests']} for "
        f"{calls['embedded_contents']} crops. Load average at the start: {started}; at the end: {load()}."
        f"\n\nDeveloper API (api-key):\n\n{comparison_table(api_key, 'off')}\n\n"
        f"Vertex AI:\n\n{comparison_table(vertex, 'off (vertex)')}"
    )


# --- 3. the SQLite vector store ----------------------------------------------------------------------


def space_for(dimensions: int) -> tuple[str, str, int]:
    from segmentation.search import descriptor

    if dimensions == descriptor.DIM:
        return ("descriptor", descriptor.VERSION, dimensions)
    return ("gemini", GEMINI_MODEL, dimensions)


def fill_store(sink: Any, start: int, stop: int, dimensions: int, seed: int = 18, chunk: int = 2000) -> None:
    """Rows `start` .. `stop` of a store: `embeddings` rows as the pipeline writes them
    (`rows.embedding_row`), five crops a photo, `CAMERAS` cameras in turn, random unit vectors."""
    import datetime as dt

    import numpy as np

    from segmentation.rows import embedding_row

    rng = np.random.default_rng(seed + start)
    space = space_for(dimensions)
    epoch = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    for first in range(start, stop, chunk):
        count = min(chunk, stop - first)
        vectors = rng.standard_normal((count, dimensions)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = []
        for offset in range(count):
            k = first + offset
            photo, index = divmod(k, 5)
            camera = f"cam-{photo % CAMERAS + 1}"
            name = f"raw/{camera}/2026/11/img-{photo:07d}.jpg"
            seen = (epoch + dt.timedelta(seconds=photo * 7)).isoformat()
            object_row = {
                "row_id": f"bench-object-{k:08d}",
                "source_uri": f"gs://{bench.BUCKET}/{name}",
                "source_name": name,
                "source_generation": 1_764_000_000_000_000 + photo,
                "object_index": index + 1,
                "output_uri": f"gs://{bench.BUCKET}/processed/{camera}/2026/11/img-{photo:07d}-{index + 1}.jpg",
                "label": "suitcase",
                "item_color": ("dark blue", "black", "red", "green", "grey")[k % 5],
                "item_gen_desc": "A hard-shell suitcase lying flat on the belt.",
                "item_det_desc": "A dark blue polycarbonate suitcase with four spinner wheels, a telescopic "
                "handle and a red ribbon tied to the top handle.",
                "detector": "gemini",
            }
            rows.append(
                embedding_row(
                    object_row, vectors[offset], embedder=space, camera=camera, seen_at=seen, embedded_at=seen
                )
            )
        sink.insert("embeddings", rows)


def checkpoint(path: Path) -> None:
    """Move the WAL into the database file, so its size is the store's."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def nearest_child() -> None:
    """In a fresh interpreter: search the store `sys.argv[1]` (dimensions argv[2], repeats argv[3])
    with and without a camera filter, interleaved; print one RESULT_PREFIX line of JSON."""
    import numpy as np

    from segmentation.search.sqlite_store import SqliteVectorStore
    from segmentation.search.store import Filters, Space

    path, dimensions, repeats = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    store = SqliteVectorStore(path)
    space = Space(*space_for(dimensions))
    filters = {"none": Filters(), "camera": Filters(camera="cam-3")}
    rng = np.random.default_rng(7)
    result: dict[str, Any] = {"import_rss": bench.peak_rss_kib(), "ms": {}, "peak_rss": {}, "matches": {}, "first": {}}
    for index in range(repeats + 1):  # the first round is reported apart: the process's first searches
        vector = rng.standard_normal(dimensions).astype(np.float32)
        vector /= np.linalg.norm(vector)
        for name in rotated(list(filters), index):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            wall, _, found = timed(store.nearest, vector, space, filters[name], TOP_K)
            if index == 0:
                result["first"][name] = wall
                continue
            result["ms"].setdefault(name, []).append(wall)
            result["peak_rss"][name] = max(result["peak_rss"].get(name, 0), bench.peak_rss_kib())
            result["matches"][name] = len(found)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_nearest_child(path: Path, dimensions: int, repeats: int) -> dict[str, Any]:
    code = "from benchmarks import search; search.nearest_child()"
    done = bench.run_python(["-c", code, str(path), str(dimensions), str(repeats)])
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"the search child printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def store_samples(sizes: Sequence[int], dimensions: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """One measured cell per (dimensions, rows): each file grows to the next size, then is searched."""
    from segmentation.sink import SqliteSink

    cells = []
    for dims in dimensions:
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            path = Path(tmp) / "store.sqlite"
            sink = SqliteSink(path)
            written, build_s = 0, 0.0
            for size in sizes:
                started = time.perf_counter()
                fill_store(sink, written, size, dims)
                checkpoint(path)
                build_s += time.perf_counter() - started
                written = size
                cell = run_nearest_child(path, dims, repeats)
                cell.update(dimensions=dims, rows=size, file_mib=size_mib(path), build_s=build_s)
                cells.append(cell)
    return cells


def store_table(cells: Sequence[dict[str, Any]]) -> str:
    rows = []
    for cell in cells:
        rows.append(
            (
                cell["dimensions"],
                f"{cell['rows']:,}",
                f"{cell['file_mib']:.1f}",
                f"**{med_p90(cell['ms']['none'])}**",
                ms(cell["first"]["none"]),
                f"{cell['peak_rss']['none'] / 1024:.0f}",
                med_p90(cell["ms"]["camera"]),
                f"{cell['peak_rss']['camera'] / 1024:.0f}",
                f"{cell['import_rss'] / 1024:.0f}",
                f"{cell['matches']['none']} / {cell['matches']['camera']}",
            )
        )
    return markdown_table(
        (
            "dims",
            "rows",
            "file MiB",
            "no filter ms",
            "1st call ms",
            "peak RSS MiB",
            "camera filter ms",
            "peak RSS MiB",
            "RSS before MiB",
            "matches",
        ),
        rows,
    )


def where_it_stops(cells: Sequence[dict[str, Any]]) -> str:
    """Sentences extrapolating the largest two sizes of each length linearly (ms and peak RSS per row)."""
    sentences = []
    for dims in sorted({cell["dimensions"] for cell in cells}):
        mine = sorted((c for c in cells if c["dimensions"] == dims), key=lambda c: c["rows"])
        if len(mine) < 2:
            continue
        small, large = mine[-2], mine[-1]
        per_row_ms = (statistics.median(large["ms"]["none"]) - statistics.median(small["ms"]["none"])) / (
            large["rows"] - small["rows"]
        )
        per_row_kib = (large["peak_rss"]["none"] - small["peak_rss"]["none"]) / (large["rows"] - small["rows"])
        base_ms = statistics.median(large["ms"]["none"]) - per_row_ms * large["rows"]
        if per_row_ms <= 0:
            continue

        def rows_at(target_ms: float, per_row_ms: float = per_row_ms, base_ms: float = base_ms) -> str:
            return f"{(target_ms - base_ms) / per_row_ms:,.0f}"

        sentences.append(
            f"length {dims}: {per_row_ms * 1e5:.0f} ms and {per_row_kib * 1e5 / 1024:.0f} MiB of peak RSS per "
            f"10^5 rows beyond {small['rows']:,} (no filter); linearly, 1 s at {rows_at(1000)} rows, "
            f"5 s at {rows_at(5000)}, 10 s at {rows_at(10000)}; 10^6 rows would take "
            f"{(base_ms + per_row_ms * 1e6) / 1000:.1f} s and about "
            f"{(large['peak_rss']['none'] + per_row_kib * (1e6 - large['rows'])) / 2**20:.1f} GiB"
        )
    return "; ".join(sentences) + "." if sentences else ""


def store_section(
    sizes: Sequence[int] = STORE_SIZES, dimensions: Sequence[int] = STORE_DIMENSIONS, repeats: int = 7
) -> str:
    started = load()
    cells = store_samples(sizes, dimensions, repeats)
    builds = ", ".join(f"{c['dimensions']}: {c['build_s']:.0f} s" for c in cells if c["rows"] == max(sizes))
    return (
        f"## S3. Local search: `SqliteVectorStore.nearest` (ms, median / p90 of {repeats})\n\n"
        f"A `SqliteSink` file of `embeddings` rows as the pipeline writes them, random unit vectors "
        f"(the search's work does not depend on the values), five crops a photo over {CAMERAS} cameras; "
        f"the top {TOP_K} of the query's space. Each file is searched in a fresh interpreter, the two "
        'filters interleaved with a new random query each round; "1st call" is the process\'s first '
        "search, apart; the file is in the OS page cache (it was just written). Peak RSS: VmHWM, reset "
        "before every call (`/proc/self/clear_refs`), so the column is the largest resident size a "
        f"search reached. Time to write the files through `SqliteSink.insert`: {builds}. Load average "
        f"at the start: {started}; at the end: {load()}.\n\n{store_table(cells)}\n\n"
        f"Extrapolation: {where_it_stops(cells)}"
    )


# --- 4. the whole search for one photo query --------------------------------------------------------


class _Timed:
    """An embedder or store whose calls are timed (ms, appended to `log[name]`)."""

    def __init__(self, inner: Any, log: dict[str, list[float]]):
        self._inner = inner
        self._log = log

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self._log.setdefault(name, []).append((time.perf_counter() - started) * 1000)

        return call


def searcher_samples(
    rows: int, photo_sizes: Sequence[tuple[int, int]], repeats: int
) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(embedder, query) -> ms of each `Searcher.search` and of its embed and lookup calls; the
    queries are a photo of each size and the description TEXT_QUERY."""
    from segmentation.search.embedders import DescriptorEmbedder
    from segmentation.search.query import Query
    from segmentation.search.service import Searcher
    from segmentation.search.sqlite_store import SqliteVectorStore
    from segmentation.sink import SqliteSink

    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-searcher-") as tmp,
        gemini_process(1) as gemini,
        bench.environ({"GOOGLE_GEMINI_BASE_URL": gemini.url}),
    ):
        embedders = {"descriptor": DescriptorEmbedder(), "gemini (api-key, 0 ms)": gemini_embedder("api-key")}
        searchers = {}
        for name, embedder in embedders.items():
            path = Path(tmp) / f"{embedder.dimensions}.sqlite"
            fill_store(SqliteSink(path), 0, rows, embedder.dimensions)
            checkpoint(path)
            log: dict[str, list[float]] = {}
            store = _Timed(SqliteVectorStore(path), log)
            # No storage: without a re-rank, Searcher.search reads no crops.
            searchers[name] = (Searcher(_Timed(embedder, log), store, storage=None), log)  # type: ignore[arg-type]
        queries = {
            **{f"photo {w}x{h}": (Query(photo="bench"), decoded(bench.photo(w, h, 0))) for w, h in photo_sizes},
            "text": (Query(text=TEXT_QUERY), None),
        }
        order = [(name, query) for name in searchers for query in queries]
        for name, query in order:  # warm-up: first-use imports, the client's connection
            searchers[name][0].search(*queries[query], top=TOP_K, deadline=time.monotonic() + 60)
        for index in range(repeats):
            for name, query in rotated(order, index):
                searcher, log = searchers[name]
                log.clear()
                wall, _, found = timed(searcher.search, *queries[query], top=TOP_K, deadline=time.monotonic() + 60)
                assert len(found.matches) == TOP_K
                cell = cells.setdefault((name, query), {"search": [], "embed": [], "lookup": []})
                cell["search"].append(wall)
                cell["embed"].append(sum(log.get("embed_images", [])) + sum(log.get("embed_text", [])))
                cell["lookup"].append(sum(log["nearest"]))
        for embedder in embedders.values():
            embedder.close()
    return cells


def searcher_section(
    rows: int = 10_000, photo_sizes: Sequence[tuple[int, int]] = ((4000, 3000), (1280, 960)), repeats: int = 9
) -> str:
    started = load()
    cells = searcher_samples(rows, photo_sizes, repeats)
    table = markdown_table(
        ("embedder", "query", "Searcher.search", "the rest (photo to JPEG)", "embed", "lookup"),
        [
            (
                name,
                size,
                f"**{med_p90(cell['search'])}**",
                med_p90([s - e - lk for s, e, lk in zip(cell["search"], cell["embed"], cell["lookup"], strict=True)]),
                med_p90(cell["embed"]),
                med_p90(cell["lookup"]),
            )
            for (name, size), cell in cells.items()
        ],
        "ll",
    )
    return (
        f"## S4. One photo query end to end: `Searcher.search` at {rows:,} crops (ms, median / p90 of {repeats})\n\n"
        "A decoded query photo (as the function hands it over) is shrunk to 1024 px and encoded "
        '("the rest"), embedded, and looked up in a SQLite store of that many rows of the embedder\'s '
        f"space (random unit vectors, as in S3), top 10, no re-rank; the text query is {TEXT_QUERY!r}. "
        "The gemini rows' embedding is one call to the stand-in with no added latency: add the "
        "service's round trip. Reading the query "
        "and writing the results, the contact sheet and the rows (`SearchService.process`) are not "
        f"included. Load average at the start: {started}; at the end: {load()}.\n\n{table}"
    )


# --- main ----------------------------------------------------------------------------------------


SECTIONS = ("machine", "descriptor", "gemini", "store", "searcher")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument(
        "--section",
        action="append",
        choices=SECTIONS,
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}; default: all",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    sections: dict[str, Callable[[], str]] = {
        "machine": lambda: "# Lost-bag search benchmarks\n\n" + bench.machine_info(),
        "descriptor": lambda: (
            descriptor_section(images=5 if quick else 20)
            + "\n\n"
            + pipeline_descriptor_section(
                objects=(10,) if quick else (1, 10, 25), images=3 if quick else 10, rounds=2 if quick else 3
            )
        ),
        "gemini": lambda: (
            gemini_section(latencies=(0.0, 0.15) if quick else LATENCIES_S, repeats=2 if quick else 7)
            + "\n\n"
            + pipeline_gemini_section(images=3 if quick else 10, rounds=2 if quick else 3)
        ),
        "store": lambda: store_section(sizes=(1_000, 10_000) if quick else STORE_SIZES, repeats=3 if quick else 7),
        "searcher": lambda: searcher_section(repeats=3 if quick else 9),
    }
    chosen = args.section or list(SECTIONS)
    started = time.perf_counter()
    for name in SECTIONS:
        if name in chosen:
            section_started = time.perf_counter()
            print(
                sections[name]() + f"\n\n_Section {name}: {time.perf_counter() - section_started:.0f} s._\n", flush=True
            )
    print(
        f"_Whole run ({', '.join(n for n in SECTIONS if n in chosen)}): {time.perf_counter() - started:.0f} s; "
        f"speed probe at the end: {bench.speed_probe()}; load average {load()}._"
    )


if __name__ == "__main__":
    main()
