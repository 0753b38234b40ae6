"""Turns at the end of an event (segmentation/turns.py): how many at once, in what order, and
that a stuck holder never stops the others for longer than the patience."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from segmentation.turns import Turns


def _holders_at_once(turns: Turns, threads: int, hold_s: float) -> int:
    lock, now, most = threading.Lock(), [0], [0]

    def work():
        with turns.turn():
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            time.sleep(hold_s)
            with lock:
                now[0] -= 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers)
    return most[0]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_no_more_than_the_slots_hold_a_turn_at_once(slots):
    assert _holders_at_once(Turns(slots, patience=10.0), threads=8, hold_s=0.02) == slots


def test_zero_slots_means_no_turns():
    assert _holders_at_once(Turns(0, patience=10.0), threads=6, hold_s=0.1) == 6


def test_turns_go_in_arrival_order_even_when_others_arrive_as_a_turn_is_handed_on():
    turns = Turns(1, patience=10.0)
    order: list[int] = []
    first_in, release_first = threading.Event(), threading.Event()

    def first():
        with turns.turn():
            first_in.set()
            release_first.wait(10)
            order.append(0)

    def later(index: int):
        with turns.turn():
            order.append(index)
            time.sleep(0.002)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert first_in.wait(10)
    for index in range(1, 9):  # queued one after another while the first holds the turn
        thread = threading.Thread(target=later, args=(index,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 5
        while len(turns._waiting) < index and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(turns._waiting) == index
    # Newcomers arriving while the queue drains must not take a turn out of order.
    late = [threading.Thread(target=later, args=(100 + index,)) for index in range(4)]
    release_first.set()
    for thread in late:
        thread.start()
    for thread in threads + late:
        thread.join(10)
    assert order[:9] == list(range(9))
    assert sorted(order[9:]) == [100, 101, 102, 103]


def test_a_stuck_holder_delays_a_waiter_by_the_patience_only():
    turns = Turns(1, patience=0.2)
    stuck, release = threading.Event(), threading.Event()

    def holder():
        with turns.turn():
            stuck.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert stuck.wait(10)
    started = time.monotonic()
    with turns.turn() as had_turn:
        waited = time.monotonic() - started
    assert had_turn is False
    assert 0.15 <= waited < 2.0
    release.set()
    thread.join(10)
    # The waiter that gave up left no trace: the one turn is free again, and only one.
    assert _holders_at_once(turns, threads=4, hold_s=0.02) == 1
    with turns.turn() as had_turn:
        assert had_turn is True


def test_turns_are_never_lost_or_doubled_when_patience_runs_out_as_they_are_handed_on():
    # Holders that take about as long as the patience: many waiters time out just as a turn is
    # handed to them. Afterwards exactly `slots` turns exist.
    turns = Turns(2, patience=0.003)
    _holders_at_once(turns, threads=40, hold_s=0.003)
    assert turns._free == 2 and not turns._waiting
    turns.patience = 10.0
    assert _holders_at_once(turns, threads=6, hold_s=0.02) == 2


def test_negative_settings_are_refused():
    with pytest.raises(ValueError):
        Turns(-1, patience=1.0)
    with pytest.raises(ValueError):
        Turns(1, patience=-1.0)


@pytest.mark.parametrize("output_turns", [1, 0])
def test_events_whose_answers_come_back_together_draw_in_turns_and_upload_without(tmp_path, monkeypatch, output_turns):
    """Six events reach the model together and its answers come back together (a 0.5 s answer),
    and every upload takes 0.15 s (a slow network). With OUTPUT_TURNS=1 each event draws its crops
    and overview while no other one draws, and the next one draws while the previous one's
    uploads are still on their way (a turn waits for them at most TURN_UPLOAD_WAIT_S, 0.03 s);
    with 0 they all draw at once, which is what the turns are for. Every event still ends ok with
    its own outputs."""
    import io
    import threading
    import time

    from PIL import Image

    import segmentation.pipeline as pipeline_module
    from devtools.standins.gemini_server import Answer
    from segmentation.function import default_pipeline
    from tests.harness import running_stack
    from tests.test_end_to_end import cupcakes
    from tests.test_parse import sample_text

    monkeypatch.setenv("OUTPUT_TURNS", str(output_turns))
    monkeypatch.setenv("EMPTY_BELT_GATE_CAMERAS", "")
    photo = Image.open(io.BytesIO(cupcakes())).convert("RGB")
    sizes = {}  # image size -> event: each event's photo is a few pixels narrower than the last

    def variant(index: int) -> bytes:
        size = (photo.width - 8 * index, photo.height)
        sizes[size] = f"turn-{index}"
        buffer = io.BytesIO()
        photo.resize(size).save(buffer, "PNG")
        return buffer.getvalue()

    with running_stack(tmp_path / "results.sqlite", monkeypatch) as stack:
        stack.gemini.enqueue(*(Answer(sample_text(6), delay=0.5) for _ in range(6)))
        blobs = [stack.upload(f"raw/cam1/turn-{index}.png", variant(index)) for index in range(6)]
        storage = default_pipeline().storage
        real_write, lock = storage.write, threading.Lock()
        drawing: dict[str, tuple[float, float]] = {}
        uploading: dict[str, tuple[float, float]] = {}

        def record(spans, event, start):
            with lock:
                first, last = spans.get(event, (start, start))
                spans[event] = (min(first, start), max(last, time.monotonic()))

        def timed_drawing(draw):
            def drawn(image, *args, **kwargs):
                start = time.monotonic()
                try:
                    return draw(image, *args, **kwargs)
                finally:
                    record(drawing, sizes[image.size], start)

            return drawn

        def slow_write(bucket, name, data, **kwargs):
            start = time.monotonic()
            if name.startswith("processed-markers/"):  # the marker: not an output
                return real_write(bucket, name, data, **kwargs)
            time.sleep(0.15)
            try:
                return real_write(bucket, name, data, **kwargs)
            finally:
                event = (
                    name.rsplit("/", 1)[-1]
                    .split("-output-")[0]
                    .removeprefix("processed_")
                    .removesuffix(".jpg")
                    .rsplit(".", 1)[0]
                )
                record(uploading, event, start)

        monkeypatch.setattr(pipeline_module, "crop_jpeg", timed_drawing(pipeline_module.crop_jpeg))
        monkeypatch.setattr(pipeline_module, "overview_jpeg", timed_drawing(pipeline_module.overview_jpeg))
        monkeypatch.setattr(storage, "write", slow_write)
        results: list = []
        threads = [
            threading.Thread(target=lambda blob=blob: results.append(stack.deliver(stack.event_for(blob))))
            for blob in blobs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

        assert [response.status_code for response in results] == [200] * 6
        assert sorted(drawing) == sorted(uploading) == [f"turn-{index}" for index in range(6)]
        order = sorted(drawing, key=lambda event: drawing[event])
        pairs = list(itertools.pairwise(order))
        drew_together = sum(drawing[later][0] < drawing[earlier][1] for earlier, later in pairs)
        if output_turns:
            assert drew_together == 0, drawing
            # The next event draws while this one's uploads are still going up.
            assert all(drawing[later][0] < uploading[earlier][1] for earlier, later in pairs), (drawing, uploading)
        else:
            assert drew_together >= 1, drawing
        images = stack.rows("images")
        assert len(images) == 6 and {row["status"] for row in images} == {"ok"}
        assert len(stack.names("processed-overview/")) == 6
