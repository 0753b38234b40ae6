"""The benchmark rig counts what it claims to (benchmarks/bench.py).

BENCHMARKS.md's figures are only as good as the rig's bookkeeping: these run the smallest real
cells (the function under functions-framework, the storage stand-in in its own process, the
BigQuery stand-in, the Gemini wire server with latency) and check the counts and the in-flight
limit, not any speed.
"""

from __future__ import annotations

import pytest

from benchmarks import bench


@pytest.mark.timeout(180)
def test_a_throughput_cell_processes_every_image_once_with_at_most_in_flight_calls():
    cell = bench.throughput_cell(0.3, 3, 9)

    assert cell["failed"] == [] and cell["ok_2xx"] == 9
    assert cell["rows_ok"] == 9 and cell["sink_image_rows"] == 9  # the function's log and the sink agree
    assert cell["gemini_calls"] == 9  # one model call per image, none for the warm-up events counted
    assert 1 <= cell["peak_in_flight"] <= 3
    # Nine images three at a time behind a 0.3 s model: at least three rounds of the latency.
    assert cell["window_s"] >= 0.9
    assert cell["images_per_s"] == pytest.approx(9 / cell["window_s"])
    assert cell["ratio"] <= 1.0
    assert cell["objects_found"] == 9 * bench.THROUGHPUT_OBJECTS
    # BENCHMARKS.md's count per event: the claim's create (no claim: no marker to look up), the
    # read, the crop listing, a crop per object, the overview, the generation check, the marker;
    # and, where the gate or the fallback is on, the lookups of the camera's empty-scene reference
    # (cached per camera in each worker process; at most one per event in flight).
    per_event = 9 * (bench.THROUGHPUT_OBJECTS + 6)
    assert per_event <= cell["emulator_requests"] <= per_event + 3


@pytest.mark.timeout(180)
def test_a_variant_s_settings_reach_the_function():
    cell = bench.throughput_cell(0.1, 2, 4, settings={"GEMINI_MAX_OBJECTS": "2"})

    assert cell["rows_ok"] == 4 and cell["objects_found"] == 4 * 2  # 5 objects answered, 2 kept


@pytest.mark.timeout(180)
def test_round_trips_make_every_event_wait_for_the_stand_ins():
    cell = bench.throughput_cell(0.1, 2, 4, round_trips_ms=(40.0, 80.0))

    assert cell["rows_ok"] == 4 and cell["sink_image_rows"] == 4
    # One after another in every event: the marker lookup, the read, the uploads (side by side),
    # the generation check, the marker (storage); the object rows, then the image row (BigQuery).
    assert cell["event_ms_mean"] >= 100 + 5 * 40 + 2 * 80


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "floor, model_calls, storage_requests, image_rows",
    [
        ("wait", 0, 0, 0),
        ("model", 1, 1, 0),  # the read
        ("io", 1, 1 + bench.THROUGHPUT_OBJECTS + 1, 1),  # the read, a crop per object, the overview
    ],
)
def test_a_floor_does_only_its_part_of_the_work(floor, model_calls, storage_requests, image_rows):
    images = 4
    cell = bench.throughput_cell(0.1, 2, images, floor=floor)

    assert cell["failed"] == [] and cell["ok_2xx"] == images
    assert cell["gemini_calls"] == model_calls * images
    assert cell["emulator_requests"] == storage_requests * images
    assert cell["sink_image_rows"] == image_rows * images
    assert cell["rows_ok"] == 0  # the floors log no "image processed" line: not the function


@pytest.mark.timeout(120)
@pytest.mark.parametrize("storage", ["in-process", "own-process"])
def test_per_image_samples_process_each_image_with_its_objects(storage):
    samples, size = bench.per_image_samples((640, 480), 3, 2, warmup=1, storage=storage)

    assert len(samples) == 2 and size > 0
    assert [(s.status, s.objects) for s in samples] == [("ok", 3), ("ok", 3)]
    for sample in samples:
        assert sample.timings["model"] < sample.wall_ms
        assert sample.outside_model_ms > 0 and sample.timings["write"] > 0


def test_the_speed_probe_reports_both_measures():
    text = bench.speed_probe(runs=1)
    assert text.startswith("Python loop ") and "1920x1080 JPEG decode" in text
