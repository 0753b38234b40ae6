"""Benchmarks of the segmentation Cloud Function on this machine; prints Markdown tables.

Run from the repository root (takes about twenty minutes on two cores, most of it section 5)::

    .venv/bin/python benchmarks/bench.py                         # everything
    .venv/bin/python benchmarks/bench.py --quick                 # fewer repetitions, small tables
    .venv/bin/python benchmarks/bench.py --section throughput    # one section (repeatable)

Sections: machine, import, first-event, memory, per-image, throughput, floors, tokens, downscale. The results of
one full run, with interpretation, are in BENCHMARKS.md at the repository root; the throughput
section also draws benchmarks/throughput.png (Pillow, benchmarks/plot.py).

Nothing here talks to Google: Cloud Storage is the in-process gcp-storage-emulator
(`devtools.standins.storage_emulator`), Gemini is `devtools.standins.gemini_server` answering a fixed
list of boxes with no added latency, rows go to SQLite in a temporary directory (section 5
uses other stand-ins, see there). The
pipeline is the production one (`default_pipeline()` in the fresh interpreters; the classes
`build_pipeline` wires, GcsStorage / SqliteSink / GeminiDetector, in table 4).
The emulator and the fake Gemini server always run in this (the parent) process; the
subprocess measurements import only `main` and the pipeline, so that their import times and
memory are not inflated by pytest, the emulator or its in-memory copies of the objects.

Tables:

1. Cold import of `main`: wall time of `import main` in fresh interpreters (median of N),
   and `-X importtime` grouped by package. "self" is the time spent in the package's own
   modules (the column adds up to the total); "cumulative" also counts everything the
   package imported first (e.g. google.genai pulls in pydantic and httpx2), so it overlaps.
2. Time to first event: a fresh interpreter imports `main`, builds the pipeline the way the
   first request does (`default_pipeline()`), then handles two CloudEvents for two different
   1920x1080 images with 10 objects. The first event also builds the storage and Gemini
   clients and imports google.cloud.storage on the way (lazy), the second does not.
3. Peak memory: a fresh interpreter imports `main`, handles a 1920x1080 event (clients built),
   then a 24-megapixel (6000x4000, quality 90) photo with 10 objects. Peak RSS (VmHWM, the
   child's own high-water mark; ru_maxrss would include this parent's, see `peak_rss_kib`)
   after each stage; the target is <= 512 MiB.
4. Per-image time outside the model call, in-process with a warm pipeline: for each image
   size and object count, 2 warm-up images and then N distinct images (distinct names, new
   generations). median / p90 of each phase of `Outcome.timings_ms`; "other" is what no phase
   times (the completion-marker lookup, naming, the log line); "wall - model" is the time the
   function spends on an image besides waiting for Gemini. Target: <= 150 ms at 1920x1080
   with 10 objects. Each image gets a fresh emulator (see `per_image_samples`); the emulator's
   request handling is still inside "read", "write", "marker" and "other". "peak MiB": each
   row again in a fresh interpreter (production pipeline, default configuration, two images),
   VmHWM as in table 3.
5. Throughput (`throughput_section`): the real function under functions-framework (gunicorn,
   WORKERS = this machine's cores as Terraform deploys it, THREADS = per-instance concurrency) as a
   subprocess (`devtools.local.LocalStack`),
   a fresh threaded in-memory Cloud Storage stand-in process per cell (`benchmarks/storage_server.py`,
   `devtools/standins/gcs_server.py`), the BigQuery stand-in, and the fake Gemini server with 1 s and 5 s
   latency counting the calls it is answering at once. A client thread pool keeps exactly
   `concurrency` binary-mode CloudEvents in flight for max(10 x concurrency, 12) 1280x720 images
   with 5 objects; images/s against the ideal concurrency / latency (target >= 90 % up to 16 in
   flight), with the function's own `timings_ms` and CPU use as evidence of what limits it. Extra
   rows repeat cells with a +-25 % spread of the model latency, WORKERS=1, the empty-belt gate on,
   the SQLite sink, the old gcp-storage-emulator stand-in, or production-like network round trips
   (the storage and BigQuery stand-ins answering 25 / 60 ms late).
5b. Floors (`floors_section`): the 1 s x 4 and x 16 cells again with stripped-down copies of the
   function (benchmarks/floor_function.py: only waiting; reading and the model call; those plus the
   uploads and rows, nothing drawn) beside the function, to show what each part of an event's
   work costs the ratio on this machine.
7. Downscale (`downscale_section`): CPU time and fidelity of the model input's resize filters.
6. Tokens (`tokens_section`): one 4000x3000 photo through the real pipeline per
   MODEL_INPUT_MAX_SIDE x GEMINI_MEDIA_RESOLUTION x model (3.x and 2.x); `prompt_tokens` of
   the image row, i.e. what the fake server's implementation of Google's counting rules says.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import io
import json
import math
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segmentation.detections import ObjectRef
    from segmentation.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUCKET = "bench-bucket"
FINALIZED = "google.cloud.storage.object.v1.finalized"
RESULT_PREFIX = "BENCH-RESULT "
IMPORT_MARK = "--bench-import-starts--"
PHASES = ("read", "decode", "model", "queue", "render", "write", "insert", "marker")
# Reported in the import breakdown even when outside the top 12 (or said to be absent).
WATCHED_PACKAGES = (
    "google.genai",
    "google.cloud.storage",
    "google.cloud.bigquery",
    "PIL",
    "functions_framework",
    "pydantic",
    "httpx2",
    "segmentation",
)
MEMORY_TARGET_MIB = 512
LATENCY_TARGET_MS = 150

# A fresh interpreter that imports `main` before anything else, then hands over to
# `child_main` (this module, imported afterwards so its own imports are not counted).
# /proc/self/status is read as text here so that nothing is imported before `main`.
CHILD_BOOTSTRAP = (
    "import time\n"
    "status_at_start = open('/proc/self/status').read()\n"
    "start = time.perf_counter()\n"
    "import main\n"
    "import_s = time.perf_counter() - start\n"
    "status_after_import = open('/proc/self/status').read()\n"
    "from benchmarks import bench\n"
    "bench.child_main(import_s, status_at_start, status_after_import)\n"
)


# --- small helpers ---------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; `align` has one character per column, "l" or "r" (default "r")."""
    align = align.ljust(len(headers), "r")
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [headers, rule, *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p90 of 20 values is the 18th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def med_p90(values: Sequence[float]) -> str:
    return f"{ms(statistics.median(values))} / {ms(percentile(values, 0.9))}"


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def run_python(args: Sequence[str]) -> subprocess.CompletedProcess:
    """Run this venv's interpreter from the repository root; raise with its stderr on failure."""
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:80]!r} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


# --- machine -----------------------------------------------------------------------------------


def machine_info() -> str:
    import PIL
    from PIL import features

    cpu_model = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "?"
    memory = _proc_field("/proc/meminfo", "MemTotal")
    rows = [
        ("date (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")),
        ("CPUs", f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), {cpu_model}"),
        ("memory", memory or "?"),
        ("OS", platform.platform()),
        ("Python", sys.version.split()[0] + f" ({sys.executable})"),
        ("Pillow", f"{PIL.__version__}, libjpeg-turbo {features.version('libjpeg_turbo') or 'no'}"),
        ("load average at start (1, 5, 15 min)", ", ".join(f"{v:.2f}" for v in os.getloadavg())),
        ("speed probe at start", speed_probe()),
    ]
    return markdown_table(("", ""), rows, "ll")


def speed_probe(runs: int = 7) -> str:
    """How fast this (shared, virtual) machine runs right now: milliseconds for fixed work, the
    median of `runs`: a pure-Python loop (the interpreter) and decoding one 1920x1080 JPEG
    (Pillow, libjpeg-turbo). On the development VM the same code has run at very different
    speeds from hour to hour, so every run reports this at its start and its end, and runs are
    comparable only when their probes are."""
    from PIL import Image

    data = photo(1920, 1080, 0)

    def python_loop() -> None:
        total = 0
        for i in range(1_000_000):
            total += i & 7

    def decode() -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    def median_ms(work: Callable[[], None]) -> float:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            work()
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    return f"Python loop {median_ms(python_loop):.1f} ms, 1920x1080 JPEG decode {median_ms(decode):.1f} ms"


def _proc_field(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


# --- 1. cold import ----------------------------------------------------------------------------


@dataclasses.dataclass
class ImportNode:
    """One line of -X importtime: a module, its own and cumulative microseconds, its children."""

    module: str
    self_us: int
    cumulative_us: int
    children: list[ImportNode] = dataclasses.field(default_factory=list)


def parse_importtime(stderr: str) -> list[ImportNode]:
    """The import tree after IMPORT_MARK. Lines come children first, indented by depth."""
    text = stderr.split(IMPORT_MARK, 1)[-1]
    pending: dict[int, list[ImportNode]] = {}
    line_re = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
    for line in text.splitlines():
        match = line_re.match(line)
        if not match:
            continue
        depth = (len(match[3]) - 1) // 2
        node = ImportNode(match[4], int(match[1]), int(match[2]), pending.pop(depth + 1, []))
        pending.setdefault(depth, []).append(node)
    return pending.get(0, [])


def package_of(module: str) -> str:
    """The group a module is reported under: google.cloud.storage, google.genai, PIL, ssl (stdlib)..."""
    parts = module.split(".")
    if parts[0] == "google":
        depth = 3 if len(parts) > 2 and parts[1] == "cloud" else 2
        return ".".join(parts[:depth])
    if parts[0] in sys.stdlib_module_names:
        return f"{parts[0]} (stdlib)"
    return parts[0]


def package_times(roots: list[ImportNode]) -> dict[str, tuple[float, float]]:
    """package -> (self ms, cumulative ms); cumulative counts only a package's outermost imports."""
    own: dict[str, float] = {}
    cumulative: dict[str, float] = {}

    def visit(node: ImportNode, inside: frozenset[str]) -> None:
        package = package_of(node.module)
        own[package] = own.get(package, 0.0) + node.self_us / 1000
        if package not in inside:
            cumulative[package] = cumulative.get(package, 0.0) + node.cumulative_us / 1000
        for child in node.children:
            visit(child, inside | {package})

    for root in roots:
        visit(root, frozenset())
    return {package: (own[package], cumulative[package]) for package in own}


def cold_import_wall_ms(runs: int) -> tuple[list[float], list[float]]:
    """(import main ms, whole interpreter run ms) per fresh interpreter."""
    code = "import time; t = time.perf_counter(); import main; print((time.perf_counter() - t) * 1000)"
    imports, processes = [], []
    for _ in range(runs):
        start = time.perf_counter()
        done = run_python(["-c", code])
        processes.append((time.perf_counter() - start) * 1000)
        imports.append(float(done.stdout.strip().splitlines()[-1]))
    return imports, processes


def importtime_medians(runs: int) -> tuple[dict[str, tuple[float, ...]], list[float]]:
    """package -> median (self ms, cumulative ms) over `runs` -X importtime runs; and each run's total."""
    code = f"import sys; sys.stderr.write({IMPORT_MARK!r} + '\\n'); import main"
    per_run = [
        package_times(parse_importtime(run_python(["-X", "importtime", "-c", code]).stderr)) for _ in range(runs)
    ]
    packages = {package for times in per_run for package in times}
    medians = {
        package: tuple(statistics.median(times.get(package, (0.0, 0.0))[i] for times in per_run) for i in (0, 1))
        for package in packages
    }
    totals = [float(sum(own for own, _ in times.values())) for times in per_run]
    return medians, totals


def import_breakdown_table(medians: dict[str, tuple[float, ...]], total_ms: float) -> str:
    """The 12 slowest packages by cumulative time, then the watched ones below them or absent."""
    ranked = sorted(((p, t) for p, t in medians.items() if p != "main"), key=lambda item: item[1][1], reverse=True)
    shown = ranked[:12] + [(p, t) for p, t in ranked[12:] if p in WATCHED_PACKAGES]
    table = markdown_table(
        ("package", "cumulative ms", "self ms", "self % of total"),
        [(f"`{package}`", ms(cum), ms(own), f"{100 * own / total_ms:.0f}%") for package, (own, cum) in shown],
        "l",
    )
    absent = [f"`{p}`" for p in WATCHED_PACKAGES if p not in medians]
    if absent:
        table += f"\n\nNot imported by `import main` (the code imports them on first use): {', '.join(absent)}."
    return table


def cold_import_section(runs: int) -> str:
    run_python(["-c", "import main"])  # compile any missing .pyc once; not measured
    imports, processes = cold_import_wall_ms(runs)
    medians, totals = importtime_medians(runs)
    summary = markdown_table(
        ("measure", f"median of {runs}", "min", "max"),
        [
            (label, ms(statistics.median(values)), ms(min(values)), ms(max(values)))
            for label, values in (
                ("`import main` (perf_counter in the process)", imports),
                ("whole `python -c 'import main'` run", processes),
                ("sum of -X importtime (which adds its own overhead)", totals),
            )
        ],
        "l",
    )
    return (
        f"## 1. Cold import of `main` (ms)\n\n{summary}\n\n"
        f"Top 12 packages by cumulative import time, then any watched package below them (median of {runs} "
        "runs of -X importtime; `main`, the root, left out):\n\n"
        + import_breakdown_table(medians, statistics.median(totals))
    )


# --- inputs --------------------------------------------------------------------------------------


def synthetic_photo(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """A JPEG that compresses like a photo: gradients, 60 filled shapes, Gaussian sensor noise."""
    from PIL import Image, ImageChops, ImageDraw

    rng = random.Random(seed)
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient.point(lambda v: 255 - v // 2))
    )
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        w, h = rng.randint(width // 30, width // 5), rng.randint(height // 30, height // 5)
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape(
            (x, y, x + w, y + h),
            fill=tuple(rng.randint(0, 255) for _ in range(3)),
            outline=(0, 0, 0),
            width=max(1, width // 500),
        )
    noise = Image.effect_noise((width, height), 18)
    image = Image.merge("RGB", [ImageChops.add(band, noise, 1.0, -128) for band in image.split()])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


_photos: dict[tuple[int, int, int], bytes] = {}


def photo(width: int, height: int, index: int, variants: int = 4) -> bytes:
    """One of `variants` cached synthetic photos of this size (generating 4000x3000 takes ~0.5 s)."""
    key = (width, height, index % variants)
    if key not in _photos:
        _photos[key] = synthetic_photo(width, height, seed=key[2])
    return _photos[key]


def gemini_answer(count: int) -> str:
    """`count` objects on a grid, in the JSON the detector asks for (box_2d normalized 0-1000)."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_w, cell_h = 1000 // columns, 1000 // rows
    objects = []
    for index in range(count):
        row, column = divmod(index, columns)
        y0, x0 = row * cell_h, column * cell_w
        objects.append(
            {
                "box_2d": [y0 + cell_h // 10, x0 + cell_w // 10, y0 + cell_h * 9 // 10, x0 + cell_w * 9 // 10],
                "label": f"suitcase {index + 1}",
                "color": "dark blue",
                "general_description": "A hard-shell suitcase lying flat on the belt.",
                "detailed_description": "A dark blue polycarbonate suitcase with four spinner wheels, a "
                "telescopic handle and a red ribbon tied to the top handle.",
            }
        )
    return json.dumps(objects)


# --- the stand-ins: storage emulator, fake Gemini, SQLite -------------------------------------------


@dataclasses.dataclass
class Uploaded:
    """An uploaded source object, as the finalize event names it."""

    name: str
    generation: int
    content_type: str
    size: int

    def ref(self) -> ObjectRef:
        from segmentation.detections import ObjectRef

        return ObjectRef(BUCKET, self.name, self.generation, self.content_type, self.size)

    def event(self) -> dict[str, Any]:
        """CloudEvent attributes and data, as Eventarc delivers them."""
        attributes = {
            "id": f"bench-{self.name}",
            "type": FINALIZED,
            "subject": f"objects/{self.name}",
            "source": f"//storage.googleapis.com/projects/_/buckets/{BUCKET}",
        }
        data = {
            "bucket": BUCKET,
            "name": self.name,
            "generation": str(self.generation),
            "contentType": self.content_type,
            "size": str(self.size),
            "metageneration": "1",
        }
        return {"attributes": attributes, "data": data}


@dataclasses.dataclass
class Emulator:
    """A running storage emulator with BUCKET, and a client on it built as GcsStorage builds its own."""

    client: Any  # google.cloud.storage.Client

    def upload(self, name: str, data: bytes) -> Uploaded:
        blob = self.client.bucket(BUCKET).blob(name)
        blob.upload_from_string(data, content_type="image/jpeg")
        return Uploaded(name, blob.generation, blob.content_type, blob.size)


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set and Google-backend variables removed; restored on exit."""
    saved = dict(os.environ)
    for name in (
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_API_KEY",
        "BQ_OBJECTS_TABLE",
        "BQ_IMAGES_TABLE",
        "GEMINI_BACKEND",
        "GOOGLE_GENAI_USE_VERTEXAI",
    ):
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def fake_gemini(objects: int) -> Iterator[Any]:
    """Fake Gemini answering `objects` boxes with no latency, and a SQLite file; os.environ points at
    them. Yields the FakeGeminiServer."""
    from devtools.standins.gemini_server import Answer, FakeGeminiServer

    answer = Answer(gemini_answer(objects))
    with FakeGeminiServer(lambda request: answer) as gemini, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        with environ(
            {
                "GOOGLE_GEMINI_BASE_URL": gemini.base_url,
                "GEMINI_API_KEY": "bench-key",
                "SQLITE_PATH": str(Path(tmp) / "results.sqlite"),
                "GEMINI_MAX_OBJECTS": "25",
                # Detection only: what indexing adds is measured by benchmarks/search.py.
                "EMBEDDER": "off",
                # As the deployment note in segmentation/storage.py recommends.
                "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA": "true",
            }
        ):
            yield gemini


@contextlib.contextmanager
def storage_emulator() -> Iterator[Emulator]:
    """A fresh in-memory emulator with BUCKET; STORAGE_EMULATOR_HOST points at it while it runs."""
    from google.cloud import storage

    from devtools.standins.storage_emulator import running_storage_emulator

    with running_storage_emulator() as emulator, environ({"STORAGE_EMULATOR_HOST": emulator.url}):
        emulator.create_bucket(BUCKET)
        yield Emulator(storage.Client())


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send the pipeline's INFO log lines (JSON on stdout) to /dev/null; they are still formatted."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


# --- fresh-interpreter runs ---------------------------------------------------------------------


def run_child(uploads: Sequence[Uploaded]) -> dict[str, Any]:
    """Handle `uploads`' events in a fresh interpreter (environment: os.environ); see `child_main`."""
    events = json.dumps([upload.event() for upload in uploads])
    done = run_python(["-c", CHILD_BOOTSTRAP, events])
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"the child printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def peak_rss_kib(status: str | None = None) -> int:
    """VmHWM, the peak resident set of this process image, from /proc/self/status text (KiB).

    Not ru_maxrss: on Linux a child inherits its parent's high-water mark across fork and exec,
    so in a child of this (large) benchmark process ru_maxrss reports the parent's size.
    """
    status = Path("/proc/self/status").read_text() if status is None else status
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match[1]) if match else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_main(import_s: float, status_at_start: str, status_after_import: str) -> None:
    """In the fresh interpreter (after `import main`): build the pipeline, handle each event.

    Prints one RESULT_PREFIX line: wall times (ms), peak RSS (KiB) after each stage, and each
    event's outcome.
    """
    from segmentation.function import default_pipeline, handle_cloud_event
    from segmentation.pipeline import Outcome

    result: dict[str, Any] = {
        "import_ms": import_s * 1000,
        "start_rss": peak_rss_kib(status_at_start),
        "import_rss": peak_rss_kib(status_after_import),
    }
    start = time.perf_counter()
    default_pipeline()
    result["build_ms"] = (time.perf_counter() - start) * 1000
    result["build_rss"] = peak_rss_kib()
    result["events"] = []
    for event in json.loads(sys.argv[1]):
        start = time.perf_counter()
        outcome = handle_cloud_event(event["attributes"], event["data"])
        assert isinstance(outcome, Outcome)
        wall_ms = (time.perf_counter() - start) * 1000
        result["events"].append(
            {
                "wall_ms": wall_ms,
                "rss": peak_rss_kib(),
                "status": outcome.status,
                "objects": outcome.objects_found,
                "timings": outcome.timings_ms,
            }
        )
    result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def phase_cells(timings: dict[str, float], wall_ms: float) -> list[str]:
    other = wall_ms - sum(timings.values())
    return [ms(timings.get(phase, 0.0)) for phase in PHASES] + [ms(other)]


def first_event_section(runs: int) -> str:
    results = []
    with fake_gemini(objects=10):
        for run in range(runs):
            with storage_emulator() as emulator:
                uploads = [emulator.upload(f"raw/first/{run}-{i}.jpg", photo(1920, 1080, i)) for i in range(2)]
                results.append(run_child(uploads))
    median_run = sorted(results, key=lambda r: r["events"][0]["wall_ms"])[len(results) // 2]

    def median_of(pick) -> str:
        return ms(statistics.median(pick(r) for r in results))

    summary = markdown_table(
        ("import `main`", "build pipeline", "1st event", "2nd event", "1st - 2nd (lazy clients)"),
        [
            (
                median_of(lambda r: r["import_ms"]),
                median_of(lambda r: r["build_ms"]),
                median_of(lambda r: r["events"][0]["wall_ms"]),
                median_of(lambda r: r["events"][1]["wall_ms"]),
                median_of(lambda r: r["events"][0]["wall_ms"] - r["events"][1]["wall_ms"]),
            )
        ],
    )
    rows = [
        (label, ms(event["wall_ms"]), *phase_cells(event["timings"], event["wall_ms"]), event["status"])
        for label, event in zip(("1st event", "2nd event"), median_run["events"], strict=False)
    ]
    phases = markdown_table(("event", "wall", *PHASES, "other", "status"), rows, "l" + "r" * (len(PHASES) + 2) + "l")
    return (
        f"## 2. Time to first event (ms, median of {runs} fresh interpreter(s))\n\n"
        "1920x1080 JPEG, 10 objects, fake Gemini with no latency.\n\n"
        f"{summary}\n\nPhases of the median run (the storage client is built and google.cloud.storage "
        'imported in "other", inside the completion-marker lookup; the Gemini client in "model"):\n\n'
        f"{phases}"
    )


def peak_memory_section() -> str:
    big = synthetic_photo(6000, 4000, seed=24)
    with fake_gemini(objects=10), storage_emulator() as emulator:
        uploads = [
            emulator.upload("raw/memory/warm-1080p.jpg", photo(1920, 1080, 0)),
            emulator.upload("raw/memory/photo-24mp.jpg", big),
        ]
        result = run_child(uploads)
    warm, large = result["events"]
    stages = [
        ("interpreter started (no imports)", result["start_rss"]),
        ("`import main`", result["import_rss"]),
        ("pipeline built", result["build_rss"]),
        (f"1920x1080 event handled ({warm['status']}, {warm['objects']} objects; clients built)", warm["rss"]),
        (f"6000x4000 event handled ({large['status']}, {large['objects']} objects)", large["rss"]),
    ]
    rows, previous = [], 0
    for label, rss in stages:  # peak values, so each increment is what that stage added to the peak
        rows.append((label, mib(rss), f"+{mib(rss - previous)}" if previous else ""))
        previous = rss
    peak_mib = large["rss"] / 1024
    verdict = "met" if peak_mib <= MEMORY_TARGET_MIB else "NOT met"
    return (
        "## 3. Peak memory, 24-megapixel photo (fresh interpreter)\n\n"
        f"6000x4000 JPEG, quality 90, {len(big) / 2**20:.1f} MiB; 10 objects; SQLite sink. "
        f"Its event took {ms(large['wall_ms'])} ms.\n\n"
        + markdown_table(("after stage", "peak RSS MiB (VmHWM)", "increment MiB"), rows, "l")
        + f"\n\nPeak {peak_mib:.0f} MiB; target <= {MEMORY_TARGET_MIB} MiB: **{verdict}**.\n\n"
        "Peak RSS is VmHWM from /proc/self/status, the high-water mark of the child's own process "
        "image. ru_maxrss is not usable here: Linux carries the parent's high-water mark over fork "
        f"and exec, and the child read {mib(result['ru_maxrss'])} MiB, this benchmark process's size."
    )


# --- 4. per-image time, in process ---------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    """One processed image: wall time of `process()`, its phase timings and outcome."""

    wall_ms: float
    timings: dict[str, float]
    status: str
    objects: int

    @property
    def outside_model_ms(self) -> float:
        return self.wall_ms - self.timings.get("model", 0.0)

    @property
    def other_ms(self) -> float:
        return self.wall_ms - sum(self.timings.values())


def per_image_samples(
    size: tuple[int, int], objects: int, images: int, warmup: int = 2, storage: str = "in-process"
) -> tuple[list[Sample], int]:
    """`warmup` then `images` distinct images through a warm pipeline; (samples after warm-up, JPEG bytes).

    `storage` "in-process": each image gets a fresh gcp-storage-emulator in this process (it
    rewrites the JSON of all its objects' metadata on every write, so a long-lived one makes
    later writes slower and slower); "own-process": one threaded in-memory stand-in
    (`devtools.standins.gcs_server`) in a process of its own for the whole cell, so its request
    handling is not on the pipeline's GIL, as Cloud Storage's is not. The pipeline is
    `build_pipeline`'s, with the Gemini client and SQLite sink kept warm across images and a
    storage client whose HTTP session the upload has already opened.
    """
    from segmentation.config import Config
    from segmentation.gemini import GeminiDetector
    from segmentation.pipeline import Pipeline
    from segmentation.sink import sink_from_config
    from segmentation.storage import GcsStorage

    width, height = size
    samples = []
    with (
        fake_gemini(objects),
        own_process_storage() if storage == "own-process" else contextlib.nullcontext() as shared,
    ):
        config = Config.from_env()
        sink, detector = sink_from_config(config), GeminiDetector(config)
        for index in range(warmup + images):
            with contextlib.nullcontext(shared) if shared else storage_emulator() as emulator:
                data = photo(width, height, index)
                upload = emulator.upload(f"raw/{width}x{height}/{objects}/img-{index:03d}.jpg", data)
                pipeline = Pipeline(config, storage=GcsStorage(emulator.client), sink=sink, detector=detector)
                samples.append(timed_process(pipeline, upload.ref()))
        detector.close()
    return samples[warmup:], len(data)


@contextlib.contextmanager
def own_process_storage() -> Iterator[Emulator]:
    """The threaded in-memory storage stand-in in its own process, with BUCKET;
    STORAGE_EMULATOR_HOST points at it while it runs."""
    from google.cloud import storage

    with emulator_process("memory") as (_, url), environ({"STORAGE_EMULATOR_HOST": url}):
        client = storage.Client()
        client.create_bucket(BUCKET)
        yield Emulator(client)


def timed_process(pipeline: Pipeline, ref: ObjectRef) -> Sample:
    """Process `ref` once, its log line discarded; the wall time around `Pipeline.process`."""
    with quiet_stdout():
        start = time.perf_counter()
        outcome = pipeline.process(ref)
        wall_ms = (time.perf_counter() - start) * 1000
    return Sample(wall_ms, outcome.timings_ms, outcome.status, outcome.objects_found)


def cell_peak_memory(size: tuple[int, int], objects: int, events: int = 2) -> dict[str, Any]:
    """Peak RSS (VmHWM, KiB) of a fresh interpreter that imports `main`, builds the production
    pipeline (`default_pipeline()`, default configuration) and handles `events` images of `size`
    with `objects` objects each; with the child's result (statuses, import RSS)."""
    width, height = size
    with fake_gemini(objects), storage_emulator() as emulator:
        uploads = [
            emulator.upload(f"raw/memory/{width}x{height}-{objects}-{i}.jpg", photo(width, height, i))
            for i in range(events)
        ]
        result = run_child(uploads)
    return {
        "peak_kib": max(event["rss"] for event in result["events"]),
        "import_kib": result["import_rss"],
        "statuses": sorted({event["status"] for event in result["events"]}),
        "objects": [event["objects"] for event in result["events"]],
    }


def per_image_section(configs: Sequence[tuple[tuple[int, int], int]], images: int) -> str:
    rows, notes, target = [], [], None
    for size, objects in configs:
        samples, size_bytes = per_image_samples(size, objects, images)
        memory = cell_peak_memory(size, objects)
        if memory["statuses"] != ["ok"] or any(found != objects for found in memory["objects"]):
            notes.append(
                f"{size[0]}x{size[1]}, {objects} objects, memory run: statuses {memory['statuses']}, "
                f"objects {memory['objects']}"
            )
        wrong = [s for s in samples if s.status != "ok" or s.objects != objects]
        if wrong:
            notes.append(
                f"{size[0]}x{size[1]}, {objects} objects: {len(wrong)} images ended "
                f"{wrong[0].status} with {wrong[0].objects} objects"
            )
        outside = [s.outside_model_ms for s in samples]
        apart, _ = per_image_samples(size, objects, images, storage="own-process")
        outside_apart = [s.outside_model_ms for s in apart]
        if size == (1920, 1080) and objects == 10:
            target = statistics.median(outside), statistics.median(outside_apart)
        rows.append(
            (
                f"{size[0]}x{size[1]}",
                objects,
                f"{size_bytes / 1024:.0f}",
                *(med_p90([s.timings.get(phase, 0.0) for s in samples]) for phase in PHASES),
                med_p90([s.other_ms for s in samples]),
                f"**{med_p90(outside)}**",
                med_p90([s.wall_ms for s in samples]),
                f"**{med_p90(outside_apart)}**",
                med_p90([s.timings.get("write", 0.0) for s in apart]),
                mib(memory["peak_kib"]),
            )
        )
    table = markdown_table(
        (
            "image",
            "objects",
            "JPEG KiB",
            *PHASES,
            "other",
            "wall - model",
            "wall",
            "wall - model, storage apart",
            "write, storage apart",
            "peak MiB",
        ),
        rows,
        "l",
    )
    text = (
        f"## 4. Per-image time outside the model call (ms, median / p90 of {images} images) and peak memory\n\n"
        'Warm in-process pipeline; fake Gemini with no latency, so "model" is the SDK request, the '
        "local HTTP round trip and parsing.\n\n"
        '"peak MiB" is measured separately for each row in a fresh interpreter: VmHWM (the process\'s own '
        "peak RSS) after `import main`, building the production pipeline with the default configuration "
        "(empty-belt gate on, as deployed) and handling two images of that row's size and object count; "
        "it includes the interpreter and the imported libraries (`import main` alone peaks at about "
        f"{mib(memory['import_kib'])} MiB).\n\n"
        "Every phase column is with the storage emulator in this process (see the note below). The two "
        '"storage apart" columns repeat the row against the threaded in-memory Cloud Storage stand-in '
        "(`devtools/standins/gcs_server.py`) in a process of its own, the throughput section's stand-in: its "
        "request handling then costs the pipeline no GIL time, as Cloud Storage's costs a function none, "
        "but a loopback round trip is far shorter than a real one.\n\n" + table
    )
    if target is not None:
        verdicts = ["met" if value <= LATENCY_TARGET_MS else "NOT met" for value in target]
        text += (
            f"\n\n1920x1080 with 10 objects: median wall - model {ms(target[0])} ms with the emulator in "
            f"process (**{verdicts[0]}**), {ms(target[1])} ms with the storage stand-in apart "
            f"(**{verdicts[1]}**); target <= {LATENCY_TARGET_MS} ms."
        )
    text += (
        "\n\nNote: the storage emulator is a single-threaded pure-Python HTTP server in this same process "
        '(a fresh one per image), so "read", "write" (one upload per crop, the overview, a crop '
        "listing, the generation check; the crops go up while the overview is still being encoded, so "
        '"render" is the crops and the rest of the overview is in "write"), "marker" and "other" '
        "(the marker lookup) include its request handling, and it "
        "shares the GIL with the pipeline. Against real Cloud Storage each of those requests is a "
        'network round trip instead (typically tens of ms for an upload), so "write" grows with the '
        "object count."
    )
    for note in notes:
        text += f"\n\nWarning: {note}."
    return text


def per_image_configs(quick: bool) -> list[tuple[tuple[int, int], int]]:
    configs = [((640, 480), n) for n in (1, 10, 25)]
    configs += [((1920, 1080), n) for n in (1, 10, 20, 25)]
    if not quick:
        configs += [((4000, 3000), n) for n in (1, 10, 25)]
    return configs


# --- 5. throughput against the function under functions-framework ----------------------------------

THROUGHPUT_SIZE = (1280, 720)
THROUGHPUT_OBJECTS = 5
THROUGHPUT_LATENCIES = (1.0, 5.0)
THROUGHPUT_CONCURRENCY = (1, 4, 16, 64)
THROUGHPUT_TARGET = 0.90  # of concurrency / latency, up to 16 in flight
THROUGHPUT_PLOT = ROOT / "benchmarks" / "throughput.png"
STORAGE_PHASES = ("read", "write")  # the marker calls are not in the logged timings
BENCH_OBJECTS_TABLE = "bench-project.conveyor.objects"
BENCH_IMAGES_TABLE = "bench-project.conveyor.images"
WRITES_ROWS = (None, "io")  # the function (floor None) and the floors that insert rows


class InFlight:
    """A counter of requests being answered, with its peak and its time integral (for the mean)."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.current = self.peak = 0
        self._area = 0.0
        self._last = time.perf_counter()

    def _advance(self, now: float) -> None:
        self._area += self.current * (now - self._last)
        self._last = now

    def change(self, delta: int) -> None:
        with self._lock:
            self._advance(time.perf_counter())
            self.current += delta
            self.peak = max(self.peak, self.current)

    def mark(self) -> tuple[float, float]:
        """(time, integral so far); resets the peak to the current value."""
        with self._lock:
            now = time.perf_counter()
            self._advance(now)
            self.peak = self.current
            return now, self._area

    def since(self, mark: tuple[float, float]) -> tuple[float, int]:
        """(mean in flight since `mark`, peak since `mark`)."""
        with self._lock:
            now = time.perf_counter()
            self._advance(now)
            return (self._area - mark[1]) / max(now - mark[0], 1e-9), self.peak


@contextlib.contextmanager
def counting_gemini(answer_text: str, latency: float, spread: float = 0.0) -> Iterator[Any]:
    """devtools.standins' FakeGeminiServer answering `answer_text` after `latency` s, with an `in_flight`
    counter (InFlight) around each request, and a deep listen queue (64 clients connect at once).
    With `spread`, each answer waits a uniform random (1 - spread .. 1 + spread) x latency (the
    mean stays `latency`; seeded, so every run draws the same sequence)."""
    import threading

    from devtools.standins import gemini_server

    in_flight = InFlight()

    class Handler(gemini_server._Handler):
        def do_POST(self) -> None:
            in_flight.change(+1)
            try:
                super().do_POST()
            finally:
                in_flight.change(-1)

    class Server(gemini_server.ThreadingHTTPServer):
        request_queue_size = 1024
        daemon_threads = True

    draws = random.Random(20261130)
    draws_lock = threading.Lock()

    class CountingGemini(gemini_server.FakeGeminiServer):
        in_flight: Any  # the shared counter of calls being answered

        def _wait(self, seconds: float) -> None:
            if spread and seconds > 0:
                with draws_lock:
                    seconds *= draws.uniform(1 - spread, 1 + spread)
            super()._wait(seconds)

        def start(self) -> CountingGemini:
            handler = type("Handler", (Handler,), {"fake": self})
            self._httpd = Server(("127.0.0.1", self._port), handler)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="bench-gemini", daemon=True
            )
            self._thread.start()
            return self

    answer = gemini_server.Answer(answer_text)
    server = CountingGemini(lambda request: answer, latency=latency)
    server.in_flight = in_flight
    with server:
        yield server


@contextlib.contextmanager
def bigquery_stand_in(round_trip_s: float = 0.0) -> Iterator[Any]:
    """devtools.standins' BigQuery stand-in (insertAll over HTTP, threaded, TCP_NODELAY), each request
    answered after `round_trip_s`."""
    from devtools.standins import bigquery_server

    with bigquery_server.FakeBigQuery(round_trip_s) as server:
        yield server


STORAGE_STAND_INS = {
    "memory": [],  # devtools.standins.gcs_server: threaded, in memory, keep-alive
    "emulator": ["--impl", "emulator"],  # stock gcp-storage-emulator: one request at a time
    "emulator-no-dump": ["--impl", "emulator", "--no-meta-dump"],
}


@contextlib.contextmanager
def emulator_process(storage: str = "memory", round_trip_ms: float = 0.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """A fresh Cloud Storage stand-in (in memory) in its own process, each request answered after
    `round_trip_ms`; see benchmarks/storage_server.py."""
    args = [sys.executable, "-m", "benchmarks.storage_server", *STORAGE_STAND_INS[storage]]
    if round_trip_ms:
        args += ["--round-trip-ms", str(round_trip_ms)]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"storage emulator did not start: {line!r}")
        yield process, line.split()[1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def emulator_stats(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url + "/__bench/stats", timeout=30) as response:
        return json.loads(response.read())


def process_cpu_s(pid: int, children: bool = True) -> float:
    """utime + stime of `pid` (and, with `children`, of its direct children), seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    if children:
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def worker_pids(arbiter_pid: int) -> list[int]:
    """The gunicorn worker processes (direct children) of `arbiter_pid`."""
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{arbiter_pid}/task/{arbiter_pid}/children").read_text().split()]
    return []


def has_built_clients(pid: int) -> bool:
    """Whether process `pid` has imported google-cloud-storage (its google_crc32c C extension is
    mapped), i.e. has handled an event and built its lazily created clients."""
    with contextlib.suppress(OSError):
        return "crc32c" in Path(f"/proc/{pid}/maps").read_text()
    return False


def machine_busy() -> tuple[float, float]:
    """(busy jiffies, total jiffies) of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_event(url: str, headers: dict[str, str], body: bytes) -> tuple[int, float, float]:
    """POST one binary-mode CloudEvent; (HTTP status or -1, start, end)."""
    import urllib.error
    import urllib.request

    start = time.perf_counter()
    try:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = -1
    return status, start, time.perf_counter()


def function_log_lines(path: Path) -> list[dict[str, Any]]:
    """The function's JSON log lines (functions-framework's own output is skipped)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(line))
    return lines


def throughput_cell(
    latency: float,
    concurrency: int,
    images: int,
    *,
    storage: str = "memory",
    workers: int | None = None,
    sink: str = "bigquery",
    gate: bool = False,
    spread: float = 0.0,
    settings: dict[str, str] | None = None,
    floor: str | None = None,
    round_trips_ms: tuple[float, float] = (0.0, 0.0),
) -> dict[str, Any]:
    """One cell: the function under functions-framework (gunicorn, WORKERS=`workers`, by default
    what Terraform deploys for this machine's cores; THREADS=concurrency), a fresh storage stand-in
    process, the counting fake Gemini with `latency` (and `spread`), `settings` added to the
    function's environment (they override the cell's own); one warm-up event (answered
    at once), then `images` events posted from `concurrency` client threads (exactly that many
    in flight until the queue runs dry). `floor`: serve benchmarks/floor_function.py in that
    FLOOR mode instead of the function (it logs no lines: no phases, no `rows_ok`).
    `round_trips_ms`: (storage, BigQuery) time each stand-in waits before answering a request, as
    the network round trips to the real services would."""
    workers = workers or deployed_workers()
    from concurrent.futures import ThreadPoolExecutor

    from devtools.local import LocalStack, cloud_event_for, storage_client

    width, height = THROUGHPUT_SIZE
    result: dict[str, Any] = {
        "latency": latency,
        "concurrency": concurrency,
        "images": images,
        "storage": storage,
        "workers": workers,
        "sink": sink,
        "gate": gate,
        "spread": spread,
        "floor": floor,
        "round_trips_ms": round_trips_ms,
    }
    with (
        counting_gemini(gemini_answer(THROUGHPUT_OBJECTS), latency, spread) as gemini,
        emulator_process(storage, round_trips_ms[0]) as (emulator, storage_url),
        bigquery_stand_in(round_trips_ms[1] / 1000) if sink == "bigquery" else contextlib.nullcontext() as bigquery,
        tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp,
    ):
        log_path = Path(tmp) / "function.log"
        env = {
            "GOOGLE_GEMINI_BASE_URL": gemini.base_url,
            "GEMINI_API_KEY": "bench-key",
            "GEMINI_MAX_OBJECTS": "25",
            # Detection only: what indexing adds is measured by benchmarks/search.py.
            "EMBEDDER": "off",
            "EMPTY_BELT_GATE_CAMERAS": "*" if gate else "",
            # THREADS = the concurrency, as Google advises for Python functions; with several WORKERS
            # each could take them all, and the client keeps `concurrency` in flight, as Cloud Run's
            # per-instance concurrency setting (max_instance_request_concurrency) would.
            "THREADS": str(concurrency),
            "WORKERS": str(workers),
            "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA": "true",
            "LOG_LEVEL": "INFO",
            **({"FLOOR": floor, "FLOOR_WAIT_S": str(latency)} if floor else {}),
            **(settings or {}),
        }
        if bigquery is not None:
            env.update(
                {
                    "BIGQUERY_EMULATOR_HOST": bigquery.url,
                    "BQ_OBJECTS_TABLE": BENCH_OBJECTS_TABLE,
                    "BQ_IMAGES_TABLE": BENCH_IMAGES_TABLE,
                }
            )
        with environ(env):
            floor_source = ROOT / "benchmarks" / "floor_function.py"
            served: dict[str, Any] = {"source": floor_source, "target": "floor"} if floor else {}
            stack = LocalStack(
                bucket=BUCKET,
                storage_port=0,
                function_port=free_port(),
                data_dir=Path(tmp),
                storage_url=storage_url,
                bridge=False,
                function_log=log_path,
                **served,
            )
            stack.start()
            try:
                client = storage_client(storage_url)
                bucket = client.bucket(BUCKET)
                events = []
                for index in range(images):
                    blob = bucket.blob(f"raw/cam1/c{concurrency}-{index:04d}.jpg")
                    blob.upload_from_string(photo(width, height, index), content_type="image/jpeg")
                    events.append(cloud_event_for(BUCKET, blob))
                warm_names = warm_up(stack, bucket, gemini, workers)
                gemini.latency = latency
                gemini_before = len(gemini.requests)
                storage_before = emulator_stats(storage_url)
                assert stack.function_process is not None
                worker_pid = stack.function_process.pid
                cpu_before = (
                    process_cpu_s(worker_pid),
                    process_cpu_s(emulator.pid, children=False),
                    process_cpu_s(os.getpid(), children=False),
                )
                machine_before = machine_busy()
                mark = gemini.in_flight.mark()
                with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eventarc") as pool:
                    posted = list(pool.map(lambda event: post_event(stack.function_url, *event), events))
                window = time.perf_counter() - mark[0]
                mean_in_flight, peak_in_flight = gemini.in_flight.since(mark)
                machine_after = machine_busy()
                cpu_after = (
                    process_cpu_s(worker_pid),
                    process_cpu_s(emulator.pid, children=False),
                    process_cpu_s(os.getpid(), children=False),
                )
                storage_after = emulator_stats(storage_url)
                gemini_calls = len(gemini.requests) - gemini_before
            finally:
                stack.stop()
            warm_rows = len(warm_names) if floor in WRITES_ROWS else 0
            result["sink_image_rows"] = (
                len(bigquery.rows(BENCH_IMAGES_TABLE)) - warm_rows if bigquery is not None else None
            )  # less the warm-up images'
        logged = [
            line
            for line in function_log_lines(log_path)
            if line.get("message") == "image processed" and line.get("object") not in warm_names
        ]
    latencies = [(end - start) * 1000 for _, start, end in posted]
    statuses = [status for status, _, _ in posted]
    timings = [line.get("timings_ms") or {} for line in logged]

    def mean_phase(names: Sequence[str]) -> float:
        return statistics.mean(sum(t.get(n, 0.0) for n in names) for t in timings) if timings else float("nan")

    outside = [line.get("processing_ms", 0.0) - (line.get("timings_ms") or {}).get("model", 0.0) for line in logged]
    busy = machine_after[0] - machine_before[0], machine_after[1] - machine_before[1]
    result.update(
        {
            "window_s": window,
            "images_per_s": images / window,
            "ideal_per_s": concurrency / latency,
            "ratio": (images / window) / (concurrency / latency),
            "mean_in_flight": mean_in_flight,
            "peak_in_flight": peak_in_flight,
            "gemini_calls": gemini_calls,
            "ok_2xx": sum(200 <= s < 300 for s in statuses),
            "failed": [s for s in statuses if not 200 <= s < 300],
            "rows_ok": sum(line.get("status") == "ok" for line in logged),
            "objects_found": sum(line.get("objects_found", 0) for line in logged),
            "event_ms_median": statistics.median(latencies),
            "event_ms_max": max(latencies),
            "event_ms_mean": statistics.mean(latencies),
            "processing_ms_mean": (
                statistics.mean(line.get("processing_ms", 0.0) for line in logged) if logged else float("nan")
            ),
            "phases_ms_mean": {phase: mean_phase((phase,)) for phase in PHASES},
            "model_ms_mean": mean_phase(("model",)),
            "storage_ms_mean": mean_phase(STORAGE_PHASES),
            "outside_ms_mean": statistics.mean(outside) if outside else float("nan"),
            "emulator_busy": (storage_after["busy_s"] - storage_before["busy_s"]) / window,
            # Less one: the stand-ins count a request once served, so `storage_before`'s own is in the after.
            "emulator_requests": storage_after["requests"] - storage_before["requests"] - 1,
            "emulator_objects": storage_after["objects"],
            "function_cores": (cpu_after[0] - cpu_before[0]) / window,
            "emulator_cores": (cpu_after[1] - cpu_before[1]) / window,
            "bench_cores": (cpu_after[2] - cpu_before[2]) / window,
            "machine_busy": busy[0] / busy[1] if busy[1] else float("nan"),
        }
    )
    return result


def warm_up(stack: Any, bucket: Any, gemini: Any, workers: int, rounds: int = 10) -> set[str]:
    """Post warm-up events (not counted) until every gunicorn worker has handled one and built its
    clients: rounds of 2 x `workers` concurrent events, each answered by the model after 0.2 s so
    that they overlap and the workers share them. Returns the warm-up images' names."""
    from concurrent.futures import ThreadPoolExecutor

    from devtools.local import cloud_event_for

    width, height = THROUGHPUT_SIZE
    names: set[str] = set()
    gemini.latency = 0.2
    for round_index in range(rounds):
        events = []
        for index in range(2 * workers):
            blob = bucket.blob(f"raw/warm/r{round_index}-{index}.jpg")
            blob.upload_from_string(photo(width, height, index), content_type="image/jpeg")
            events.append(cloud_event_for(BUCKET, blob))
            names.add(blob.name)
        with ThreadPoolExecutor(max_workers=len(events)) as pool:
            statuses = [status for status, _, _ in pool.map(lambda e: post_event(stack.function_url, *e), events)]
        if any(status != 200 for status in statuses):
            raise RuntimeError(f"warm-up events answered {statuses}; see the function log")
        pids = worker_pids(stack.function_process.pid)
        if len(pids) == workers and all(has_built_clients(pid) for pid in pids):
            return names
    raise RuntimeError(f"after {rounds} warm-up rounds not every one of the {workers} workers had handled an event")


def throughput_images(concurrency: int) -> int:
    """Ten rounds of `concurrency` events (at least 12): the first round, posted all at once,
    and the last, draining, weigh a tenth of the window each instead of a third."""
    return max(10 * concurrency, 12)


def deployed_workers() -> int:
    """WORKERS as terraform/function.tf sets it for an instance with this machine's cores."""
    return max(1, len(os.sched_getaffinity(0)))


@dataclasses.dataclass(frozen=True)
class Variant:
    """A configuration of the throughput benchmark other than the default one (`label` says how)."""

    label: str
    storage: str = "memory"
    workers: int | None = None  # None: deployed_workers()
    sink: str = "bigquery"
    gate: bool = False
    spread: float = 0.0
    settings: tuple[tuple[str, str], ...] = ()  # more function settings, e.g. (("MODEL_INPUT_MAX_SIDE", "1024"),)
    round_trips_ms: tuple[float, float] = (0.0, 0.0)  # (storage, BigQuery) stand-ins' answer delay


DEFAULT_VARIANT = Variant("")
LATENCY_SPREAD = 0.25
# (storage, BigQuery) round trips of the production-like rows: about what a function in the
# services' region waits for a small upload or metadata call and for a streaming insert.
ROUND_TRIPS_MS = (25.0, 60.0)
ROUND_TRIPS = f"round trips {ROUND_TRIPS_MS[0]:g} / {ROUND_TRIPS_MS[1]:g} ms"
THROUGHPUT_VARIANTS = (  # (latency, in flight, variant) rows after the main table
    (1.0, 4, Variant("latency +-25 %", spread=LATENCY_SPREAD)),
    (1.0, 16, Variant("latency +-25 %", spread=LATENCY_SPREAD)),
    (1.0, 64, Variant("latency +-25 %", spread=LATENCY_SPREAD)),
    (5.0, 16, Variant("latency +-25 %", spread=LATENCY_SPREAD)),
    (1.0, 4, Variant("WORKERS=1", workers=1)),
    (1.0, 16, Variant("WORKERS=1", workers=1)),
    (1.0, 64, Variant("WORKERS=1", workers=1)),
    (1.0, 4, Variant("WORKERS=4", workers=4)),
    (1.0, 16, Variant("WORKERS=4", workers=4)),
    (1.0, 4, Variant("OUTPUT_TURNS=0 (no turns)", settings=(("OUTPUT_TURNS", "0"),))),
    (1.0, 16, Variant("OUTPUT_TURNS=0 (no turns)", settings=(("OUTPUT_TURNS", "0"),))),
    (1.0, 64, Variant("OUTPUT_TURNS=0 (no turns)", settings=(("OUTPUT_TURNS", "0"),))),
    (1.0, 16, Variant("OUTPUT_TURNS=2", settings=(("OUTPUT_TURNS", "2"),))),
    (1.0, 16, Variant("MODEL_INPUT_MAX_SIDE=1024", settings=(("MODEL_INPUT_MAX_SIDE", "1024"),))),
    (1.0, 4, Variant("empty-belt gate on", gate=True)),
    (1.0, 16, Variant("empty-belt gate on", gate=True)),
    (1.0, 16, Variant("SQLite sink", sink="sqlite")),
    (1.0, 16, Variant("gcp-storage-emulator", storage="emulator")),
    (1.0, 4, Variant(ROUND_TRIPS, round_trips_ms=ROUND_TRIPS_MS)),
    (1.0, 16, Variant(ROUND_TRIPS, round_trips_ms=ROUND_TRIPS_MS)),
    (5.0, 16, Variant(ROUND_TRIPS, round_trips_ms=ROUND_TRIPS_MS)),
    (
        1.0,
        16,
        Variant(ROUND_TRIPS + ", OUTPUT_TURNS=0", round_trips_ms=ROUND_TRIPS_MS, settings=(("OUTPUT_TURNS", "0"),)),
    ),
)


def throughput_section(
    latencies: Sequence[float],
    concurrencies: Sequence[int],
    variants: Sequence[tuple[float, int, Variant]] = (),
    images_for=throughput_images,
    plot_path: Path | None = THROUGHPUT_PLOT,
) -> str:
    def cell(latency: float, concurrency: int, variant: Variant = DEFAULT_VARIANT) -> dict[str, Any]:
        result = throughput_cell(
            latency,
            concurrency,
            images_for(concurrency),
            storage=variant.storage,
            workers=variant.workers,
            sink=variant.sink,
            gate=variant.gate,
            spread=variant.spread,
            settings=dict(variant.settings),
            round_trips_ms=variant.round_trips_ms,
        )
        result["variant"] = variant.label
        print(
            f"throughput {latency:g} s x {concurrency}{' (' + variant.label + ')' if variant.label else ''}: "
            f"{result['images_per_s']:.2f} images/s, {100 * result['ratio']:.0f}% of ideal",
            file=sys.stderr,
            flush=True,
        )
        return result

    started_load = os.getloadavg()
    probe = speed_probe()
    cells = [cell(latency, c) for latency in latencies for c in concurrencies]
    extra = [cell(latency, c, variant) for latency, c, variant in variants]
    cpus = len(os.sched_getaffinity(0))

    def row(cell: dict[str, Any], label: bool) -> tuple:
        ratio = f"{100 * cell['ratio']:.0f}%"
        if cell["concurrency"] <= 16 and not cell["variant"]:
            ratio = f"**{ratio}**" + ("" if cell["ratio"] >= THROUGHPUT_TARGET else " (below 90%)")
        function_cpu_ms = 1000 * cell["function_cores"] * cell["window_s"] / cell["images"]
        first = (cell["variant"],) if label else ()
        return (
            *first,
            f"{cell['latency']:g} s",
            cell["concurrency"],
            cell["images"],
            f"{cell['window_s']:.1f}",
            f"{cell['images_per_s']:.2f}",
            f"{cell['ideal_per_s']:.2f}",
            ratio,
            f"{cell['peak_in_flight']} / {cell['mean_in_flight']:.1f}",
            ms(cell["event_ms_mean"]),
            ms(cell["model_ms_mean"]),
            ms(cell["event_ms_mean"] - cell["model_ms_mean"]),
            ms(cell["phases_ms_mean"]["decode"]),
            ms(cell["phases_ms_mean"]["read"] + cell["phases_ms_mean"]["write"]),
            f"{function_cpu_ms:.0f}",
            f"{cell['function_cores']:.2f}",
            f"{cell['emulator_cores']:.2f}",
            f"{100 * cell['machine_busy']:.0f}%",
        )

    headers = (
        "Gemini latency",
        "in flight",
        "images",
        "window s",
        "images/s",
        "ideal c/L",
        "ratio",
        "Gemini calls max / mean",
        "event ms",
        "model ms",
        "outside model ms",
        "decode ms",
        "read + write ms",
        "function CPU ms / image",
        "function CPU cores",
        "storage stand-in cores",
        "machine CPU busy",
    )
    table = markdown_table(headers, [row(c, False) for c in cells], "ll")
    problems = [
        f"{c['latency']:g} s x {c['concurrency']} {c['variant']}: {len(c['failed'])} events not acknowledged "
        f"({sorted(set(c['failed']))}), {c['rows_ok']} ok rows of {c['images']}"
        for c in cells + extra
        if c["failed"] or c["rows_ok"] != c["images"]
    ]
    problems += [
        f"{c['latency']:g} s x {c['concurrency']} {c['variant']}: {c['sink_image_rows']} image rows reached "
        f"the BigQuery stand-in for {c['images']} images"
        for c in cells + extra
        if c.get("sink_image_rows") is not None and c["sink_image_rows"] != c["images"]
    ]
    below = [c for c in cells if c["concurrency"] <= 16 and c["ratio"] < THROUGHPUT_TARGET]
    verdict = (
        "met"
        if not below
        else "NOT met ("
        + ", ".join(f"{c['latency']:g} s x {c['concurrency']}: {100 * c['ratio']:.0f}%" for c in below)
        + ")"
    )
    text = (
        "## 5. Throughput against the local Gemini server (one function instance)\n\n"
        "**Configuration** (every row of the first table): the real function under functions-framework "
        f"(gunicorn gthread) with **WORKERS={deployed_workers()}** and **THREADS = in flight**, what "
        f"terraform/function.tf deploys for an instance with this machine's {cpus} vCPUs (a worker per vCPU, a "
        "thread per concurrent event); "
        f"{THROUGHPUT_SIZE[0]}x{THROUGHPUT_SIZE[1]} JPEGs, {THROUGHPUT_OBJECTS} objects each, EMPTY_BELT_GATE_CAMERAS "
        "empty (the gate's cost is in the second table). "
        "Stand-ins, each fresh per row: Cloud Storage = `devtools/standins/gcs_server.py` in its own process "
        "(threaded, in memory, keep-alive; the real google-cloud-storage client reaches it through "
        "STORAGE_EMULATOR_HOST); "
        "BigQuery = `devtools/standins/bigquery_server.py` (insertAll; the real google-cloud-bigquery client through "
        "BIGQUERY_EMULATOR_HOST; TCP_NODELAY set, see `bigquery_stand_in`); Gemini = the wire server answering each "
        "call after the stated latency. The stand-ins, the client and the function share this machine's "
        f"{cpus} cores. A client thread pool posts binary-mode finalize CloudEvents straight to the function, keeping "
        "exactly `in flight` events outstanding (as Cloud Run's per-instance concurrency would), for max(10 x in "
        "flight, 12) images after warm-up events (not counted) that reached every worker process.\n\n"
        "window = first post to last answer; images/s = images / window; ideal = in flight / latency; ratio = "
        'images/s / ideal. "Gemini calls" are counted at the wire server (requests being answered at once, peak '
        'and time-weighted mean over the window). "event ms" is the mean time from post to answer at the client; '
        '"model ms", "decode ms" (decode plus the model\'s downscaled JPEG) and "read + write ms" are means '
        'of the function\'s own `timings_ms` log lines; "outside model" = event - model, everything an event '
        "spends besides waiting for Gemini, including the completion-marker calls and the HTTP hop the log line "
        "does not time. CPU: the function's processes (gunicorn arbiter and workers) and the storage stand-in's "
        'process from /proc, per second of window (cores) and per image; "machine CPU busy" counts every '
        f"process. Load average (1 min) when the section started: {started_load[0]:.2f}; speed probe "
        f"(see Machine): {probe} at the start, {speed_probe()} at the end.\n\n"
        + table
        + f"\n\nTarget: >= {100 * THROUGHPUT_TARGET:.0f}% of in flight / latency up to 16 in flight: **{verdict}**."
    )
    if extra:
        text += (
            "\n\nThe same cells in other configurations (one change each from the table above): "
            f'"latency +-{100 * LATENCY_SPREAD:.0f} %": each Gemini answer takes a uniform random '
            f"{1 - LATENCY_SPREAD:g}-{1 + LATENCY_SPREAD:g} x the latency (same mean, so the same ideal), as "
            'real model calls vary, instead of exactly the latency; "WORKERS=1": one gunicorn worker '
            'process (functions-framework\'s default), THREADS = in flight; "WORKERS=4": two worker '
            'processes per vCPU; "OUTPUT_TURNS=0 (no turns)": every event draws, uploads and inserts as '
            'soon as its answer is back, all of them at once (the behaviour before turns); "OUTPUT_TURNS=2": '
            'two events of a worker at a time; "MODEL_INPUT_MAX_SIDE=1024": the previous default, every 1280x720 frame '
            'resized to 1024 px and re-encoded for the model instead of sent as uploaded; "empty-belt gate on": '
            "EMPTY_BELT_GATE_CAMERAS=* (the gate checks each frame before its "
            "Gemini call; every frame here holds items, so every event still calls Gemini); "
            '"SQLite sink": rows to the local SQLite file instead of the '
            'BigQuery stand-in (the previous report\'s setting); "gcp-storage-emulator": the previous '
            "report's storage stand-in, the stock emulator in its own process (one request at a time, a new "
            "connection per request, its metadata document rewritten after every write); "
            f'"{ROUND_TRIPS}": the storage stand-in answers every request {ROUND_TRIPS_MS[0]:g} ms late '
            f"and the BigQuery stand-in {ROUND_TRIPS_MS[1]:g} ms late, on their own threads, as the network "
            "round trips to the real services would make an event wait (they cost no CPU here, as they "
            "would not in production).\n\n"
            + markdown_table(("configuration", *headers), [row(c, True) for c in extra], "lll")
        )
    for problem in problems:
        text += f"\n\nWarning: {problem}."
    if plot_path is not None:
        throughput_plot(cells, plot_path)
        shown = plot_path.resolve()
        text += f"\n\nPlot: `{shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown}`."
    return text


FLOOR_CELLS = ((1.0, 4), (1.0, 16))  # (latency, in flight): the target's cells at the latency that strains it
FLOOR_ROWS = (  # (FLOOR mode or None for the real function, what the row's function does)
    ("wait", "waits the latency, nothing else"),
    ("model", "reads the photo, sends it to Gemini"),
    ("io", "+ uploads 5 crops and the overview (not drawn), inserts the rows"),
    (None, "the function (+ decode, drawing, marker, crop listing, generation check)"),
)


def floors_section(cells: Sequence[tuple[float, int]] = FLOOR_CELLS, images_for=throughput_images) -> str:
    """Throughput cells of stripped-down copies of the function (benchmarks/floor_function.py),
    each doing part of its work through the same clients, beside the function itself in the same
    spell of the machine: how much of the ratio each part costs here."""
    started_load = os.getloadavg()
    probe = speed_probe()
    rows, problems = [], []
    for latency, concurrency in cells:
        for floor, label in FLOOR_ROWS:
            cell = throughput_cell(latency, concurrency, images_for(concurrency), floor=floor)
            print(
                f"floor {floor or 'function'} {latency:g} s x {concurrency}: {100 * cell['ratio']:.0f}% of ideal",
                file=sys.stderr,
                flush=True,
            )
            expected_rows = cell["images"] if floor in WRITES_ROWS else 0
            if cell["failed"] or cell["ok_2xx"] != cell["images"] or (cell["sink_image_rows"] or 0) != expected_rows:
                problems.append(
                    f"{label} at {latency:g} s x {concurrency}: {cell['ok_2xx']} of {cell['images']} "
                    f"events acknowledged, {cell['sink_image_rows']} image rows"
                )
            rows.append(
                (
                    label,
                    f"{latency:g} s",
                    concurrency,
                    cell["images"],
                    f"{cell['window_s']:.1f}",
                    f"{cell['images_per_s']:.2f}",
                    f"{100 * cell['ratio']:.0f}%",
                    ms(cell["event_ms_mean"]),
                    ms(cell["event_ms_mean"] - 1000 * latency),
                    f"{1000 * cell['function_cores'] * cell['window_s'] / cell['images']:.0f}",
                    f"{cell['emulator_cores']:.2f}",
                    f"{100 * cell['machine_busy']:.0f}%",
                )
            )
    headers = (
        "what the function does per event",
        "Gemini latency",
        "in flight",
        "images",
        "window s",
        "images/s",
        "ratio",
        "event ms",
        "event - latency ms",
        "function CPU ms / image",
        "storage stand-in cores",
        "machine CPU busy",
    )
    text = (
        "## 5b. Floors: the same cells with less of the function's work\n\n"
        "Each row is a throughput cell as in section 5 (same stand-ins, client, WORKERS and THREADS, same "
        "1280x720 photos with 5 objects), but functions-framework serves `benchmarks/floor_function.py`, a "
        "stripped-down copy of the function that does only part of the work per event, through the clients the "
        "function builds (google-cloud-storage, google-genai, google-cloud-bigquery); the last row of each "
        "cell is the function itself, measured in the same spell of the machine. A row's ratio is the best "
        "any function doing at least that row's work through these clients could reach here; the differences "
        f"between rows are what each part costs. Load average (1 min) when the section started: "
        f"{started_load[0]:.2f}; speed probe: {probe} at the start, {speed_probe()} at the end.\n\n"
        + markdown_table(headers, rows, "ll")
    )
    for problem in problems:
        text += f"\n\nWarning: {problem}."
    return text


def throughput_plot(cells: Sequence[dict[str, Any]], path: Path) -> Path:
    from benchmarks.plot import Series, log_log_plot

    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    series = []
    latencies = sorted({c["latency"] for c in cells})
    concurrencies = sorted({c["concurrency"] for c in cells})
    for color, latency in zip(colors, latencies, strict=False):
        row = sorted(
            (c for c in cells if c["latency"] == latency and not c.get("variant")), key=lambda c: c["concurrency"]
        )
        series.append(
            Series(
                f"ideal, {latency:g} s latency",
                [(c, c / latency) for c in concurrencies],
                color,
                dashed=True,
                markers=False,
            )
        )
        series.append(
            Series(
                f"measured, {latency:g} s",
                [(c["concurrency"], c["images_per_s"]) for c in row],
                color,
                annotations=[f"{100 * c['ratio']:.0f}%" for c in row],
            )
        )
    values = [y for s in series for _, y in s.points]
    low = 10 ** math.floor(math.log10(min(values)))
    high = 10 ** math.ceil(math.log10(max(values)))
    y_ticks = [
        v
        for e in range(round(math.log10(low)), round(math.log10(high)) + 1)
        for v in (10**e, 2 * 10**e, 5 * 10**e)
        if low <= v <= high
    ]
    return log_log_plot(
        path,
        series,
        title="Images per second, one instance, vs. Gemini calls in flight",
        x_label="per-instance concurrency (events in flight, gunicorn THREADS)",
        y_label="images / s (log)",
        x_ticks=concurrencies,
        y_ticks=y_ticks,
    )


# --- 6. tokens per downscale setting -------------------------------------------------------------

TOKEN_MAX_SIDES = (512, 768, 1024, 1536, 2048)
TOKEN_RESOLUTIONS = ("low", "medium", "high", "")
TOKEN_MODELS = ("gemini-3.5-flash", "gemini-2.5-flash")


def tokens_section(
    max_sides: Sequence[int] = TOKEN_MAX_SIDES,
    resolutions: Sequence[str] = TOKEN_RESOLUTIONS,
    models: Sequence[str] = TOKEN_MODELS,
    size: tuple[int, int] = (4000, 3000),
) -> str:
    from devtools.standins.gemini_server import image_token_count
    from segmentation.config import Config
    from segmentation.gemini import GeminiDetector
    from segmentation.images import model_input_size
    from segmentation.pipeline import Pipeline
    from segmentation.sink import SqliteSink, sink_from_config
    from segmentation.storage import GcsStorage

    width, height = size
    data = synthetic_photo(width, height, seed=4000)
    tokens: dict[tuple[str, int, str], int] = {}
    sent: dict[tuple[str, int, str], str] = {}
    text_tokens = set()
    with fake_gemini(objects=1) as gemini:
        for model in models:
            for side in max_sides:
                for resolution in resolutions:
                    settings = {
                        "GEMINI_MODEL": model,
                        "MODEL_INPUT_MAX_SIDE": str(side),
                        "GEMINI_MEDIA_RESOLUTION": resolution,
                        "EMPTY_BELT_GATE_CAMERAS": "",
                    }
                    with environ(settings), storage_emulator() as emulator:
                        config = Config.from_env()
                        name = f"raw/tokens/{model}-{side}-{resolution or 'none'}.jpg"
                        upload = emulator.upload(name, data)
                        detector = GeminiDetector(config)
                        sink = sink_from_config(config)
                        pipeline = Pipeline(config, storage=GcsStorage(emulator.client), sink=sink, detector=detector)
                        before = len(gemini.requests)
                        with quiet_stdout():
                            outcome = pipeline.process(upload.ref())
                        detector.close()
                        found = [r for r in SqliteSink(config.sqlite_path).rows("images") if r["source_name"] == name]
                        if outcome.status != "ok" or len(found) != 1:
                            raise RuntimeError(f"{name}: {outcome.status}, {len(found)} image rows")
                        request = gemini.requests[before]
                        part = request.image_part or {}
                        level = (part.get("mediaResolution") or {}).get("level") or request.generation_config.get(
                            "mediaResolution"
                        )
                        where = (
                            "per part"
                            if part.get("mediaResolution")
                            else "request"
                            if request.generation_config.get("mediaResolution")
                            else "none"
                        )
                        key = (model, side, resolution)
                        tokens[key] = found[0]["prompt_tokens"]
                        sent[key] = f"{level or '-'} ({where})"
                        text_tokens.add(
                            tokens[key] - image_token_count(model, level, model_input_size(width, height, side))
                        )
    headers = ["max side", "image sent"] + [
        f"{model.removeprefix('gemini-')} {res or 'none'}" for model in models for res in resolutions
    ]
    rows: list[tuple] = []
    for side in max_sides:
        w, h = model_input_size(width, height, side)
        rows.append((side, f"{w}x{h}", *(tokens[(model, side, res)] for model in models for res in resolutions)))
    table = markdown_table(headers, rows)
    how = sorted(
        {
            f"{model} / {res or 'none'}: {sent[(model, side, res)]}"
            for model in models
            for res in resolutions
            for side in max_sides[:1]
        }
    )
    text_part = (
        (f"{min(text_tokens)}" if len(text_tokens) == 1 else f"{min(text_tokens)}-{max(text_tokens)}")
        if text_tokens
        else "?"
    )
    return (
        f"## 6. Prompt tokens per image by downscale setting ({width}x{height} photo)\n\n"
        "`prompt_tokens` of the image row, one image through the real pipeline per cell (GEMINI_MODEL, "
        'MODEL_INPUT_MAX_SIDE and GEMINI_MEDIA_RESOLUTION as in the column; "none" = empty, no media '
        "resolution sent). These numbers are what the local Gemini wire server (`devtools/standins/gemini_server.py`) "
        "returns in `usageMetadata`: its implementation of Google's documented counting rules, not a live "
        "measurement. Its rules, from Google's documentation (sources in the module): Gemini 3 and later "
        "bill a fixed budget per image by media resolution (low 280, medium 560, high 1120) and default to "
        "high (1120) when none is sent; Gemini 2.x with a media resolution bills low 64, medium 256, high 256 "
        '("zoomed reframing with 256 tokens"), and without one 258 tokens per 768x768 tile (one tile up to '
        f"384x384). Every cell also includes {text_part} tokens of system instruction and prompt text (one "
        "token per four characters).\n\n"
        + table
        + "\n\nWhat the function sent (the fake records each request): "
        + "; ".join(how)
        + "."
    )


# --- 7. the model input's downscale filter -------------------------------------------------------

# (width, height, MODEL_INPUT_MAX_SIDE): the default side (1920) sends frames up to 1920 px as
# uploaded, so its resizes start above that; 1024 is the previous default.
DOWNSCALE_SIZES = ((1280, 720, 1024), (1920, 1080, 1024), (2448, 2048, 1920), (4000, 3000, 1920), (4000, 3000, 1024))
DOWNSCALE_FILTERS = (("LANCZOS", None), ("LANCZOS", 2.0), ("BICUBIC", 2.0), ("BICUBIC", 1.5), ("BILINEAR", 1.5))


def downscale_section(sizes: Sequence[tuple[int, int, int]] = DOWNSCALE_SIZES, repeats: int = 5) -> str:
    """CPU time of `images.model_input`'s resize to each case's MODEL_INPUT_MAX_SIDE per filter and
    reducing_gap, best of three runs of `repeats`, and its PSNR against a fair (no reducing_gap)
    Lanczos resampling of the same photo; one thread, this process."""
    import numpy as np
    from PIL import Image

    from segmentation.images import MODEL_REDUCING_GAP, MODEL_RESAMPLING, load_image, model_input_size

    def cpu_ms(call: Callable[[], Any]) -> float:
        call()
        best = math.inf
        for _ in range(3):
            started = time.process_time()
            for _ in range(repeats):
                call()
            best = min(best, (time.process_time() - started) / repeats)
        return 1000 * best

    rows = []
    for width, height, max_side in sizes:
        image = load_image(synthetic_photo(width, height, seed=7), max_pixels=10**9).image
        size = model_input_size(width, height, max_side)
        fair = np.asarray(image.resize(size, Image.Resampling.LANCZOS), np.float64)
        for name, gap in DOWNSCALE_FILTERS:
            method = Image.Resampling[name]
            out = np.asarray(image.resize(size, method, reducing_gap=gap), np.float64)
            mse = float(((out - fair) ** 2).mean())
            psnr = "exact" if mse == 0 else f"{10 * math.log10(255**2 / mse):.1f}"
            chosen = " (used)" if method == MODEL_RESAMPLING and gap == MODEL_REDUCING_GAP else ""
            rows.append(
                (
                    f"{width}x{height}",
                    f"{size[0]}x{size[1]}",
                    f"{name}{chosen}",
                    gap or "none",
                    ms(cpu_ms(lambda: image.resize(size, method, reducing_gap=gap))),  # noqa: B023 - called now
                    psnr,
                )
            )
    return (
        "## 7. Downscaling the model's copy (CPU ms, best of 3 x " + str(repeats) + ")\n\n"
        "A photo longer than MODEL_INPUT_MAX_SIDE is resized to it before its model call (and then "
        "encoded as JPEG); with the default of 1920, an upright colour JPEG up to 1920 px (1280x720, "
        "1920x1080) is sent as uploaded, with no resize. The 1024 rows are `MODEL_INPUT_MAX_SIDE=1024`, "
        "the previous default. PSNR is against a fair Lanczos resampling (no reducing_gap); above 40 dB "
        "the two are the same picture to a viewer and to the model.\n\n"
        + markdown_table(
            ["photo", "sent", "filter", "reducing_gap", "CPU ms", "PSNR dB vs fair Lanczos"], rows, align="lllrrr"
        )
    )


# --- main ----------------------------------------------------------------------------------------


SECTIONS = ("machine", "import", "first-event", "memory", "per-image", "throughput", "floors", "tokens", "downscale")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions, no 4000x3000 rows, small throughput and token tables"
    )
    parser.add_argument(
        "--section",
        action="append",
        choices=SECTIONS,
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}; default: all",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"where the throughput plot goes (default: {THROUGHPUT_PLOT.relative_to(ROOT)}; "
        "with --quick: none unless given)",
    )
    args = parser.parse_args(argv)
    import_runs, first_runs, images = (3, 1, 5) if args.quick else (5, 3, 20)
    plot = args.plot if args.plot or args.quick else THROUGHPUT_PLOT
    if args.quick:
        throughput = lambda: throughput_section((0.5,), (1, 4), images_for=lambda c: max(2 * c, 4), plot_path=plot)
        tokens = lambda: tokens_section(max_sides=(512, 1024), resolutions=("high", ""))
    else:
        throughput = lambda: throughput_section(
            THROUGHPUT_LATENCIES, THROUGHPUT_CONCURRENCY, variants=THROUGHPUT_VARIANTS, plot_path=plot
        )
        tokens = tokens_section
    chosen = args.section or list(SECTIONS)

    started = time.perf_counter()
    sections = {
        "machine": lambda: "# Segmentation function benchmarks\n\n" + machine_info(),
        "import": lambda: cold_import_section(import_runs),
        "first-event": lambda: first_event_section(first_runs),
        "memory": peak_memory_section,
        "per-image": lambda: per_image_section(per_image_configs(args.quick), images),
        "throughput": throughput,
        "floors": (lambda: floors_section(((0.5, 4),), images_for=lambda c: 2 * c)) if args.quick else floors_section,
        "tokens": tokens,
        "downscale": lambda: downscale_section(repeats=2 if args.quick else 5),
    }
    for name in SECTIONS:
        if name in chosen:
            section_started = time.perf_counter()
            print(
                sections[name]() + f"\n\n_Section {name}: {time.perf_counter() - section_started:.0f} s._\n", flush=True
            )
    print(
        f"_Whole run ({', '.join(n for n in SECTIONS if n in chosen)}): {time.perf_counter() - started:.0f} s; "
        f"speed probe at the end: {speed_probe()}._"
    )


if __name__ == "__main__":
    main()
