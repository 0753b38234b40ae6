"""Load and faults: hundreds of images through the local emulation, end state checked exactly.

functions-framework runs the function under gunicorn with several worker processes and
several request threads each (per-instance concurrency > 1), against the storage emulator,
the Gemini wire server (0.2-0.5 s per answer) and the row sink shared by every worker. Events
come from an Eventarc stand-in that redelivers what got no 2xx. After each scenario the bucket
and the rows must be exactly what the images say (`tests.load_harness.check_end_state`):
one image row per image with the right status, one row and one crop per object, one overview
and one marker per image, nothing else.

Two scenarios race generations of one name (an older one finishing, or failing, after the
newer one was processed): the newer generation's outputs and marker must survive.

LOAD_TEST_IMAGES (default 500) sets the number of images per scenario (the BigQuery scenario
uses at most 60); LOAD_TEST_REPORT names a file each scenario appends its summary line to.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import io
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from PIL import Image

from devtools.standins.gemini_server import (
    Answer,
    gzip_without_header,
    internal_error,
    not_json,
    rate_limited,
    rejected_by_sdk,
    unavailable,
)
from tests.load_harness import (
    BUCKET,
    ROOT_DIR,
    EndState,
    LoadGemini,
    answer_text,
    check_end_state,
    crop_name,
    delivery_summary,
    expected_for,
    free_port,
    kill,
    load_stack,
    make_image,
    marker_name,
    object_count,
    overview_name,
    pending_faults,
    retry_log_counts,
    shuffled_copies,
    summarize,
    truncated_text,
)

N = int(os.environ.get("LOAD_TEST_IMAGES", "500"))


def image_names(n: int) -> dict[str, int]:
    """raw/camK/imgNNNN.jpg -> image id NNNN, spread over four cameras."""
    return {f"raw/cam{i % 4}/img{i:04d}.jpg": i for i in range(n)}


def newer_id(image_id: int) -> int:
    """The image id drawn into a re-upload (a newer generation): three more objects, mod 10."""
    return image_id + 2003


def replay_cli(stack, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m segmentation.replay gs://BUCKET/raw/ ARGS` with the function's environment."""
    return subprocess.run(
        [sys.executable, "-m", "segmentation.replay", f"gs://{BUCKET}/raw/", *args],
        env=stack.function_env(),
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def report(label: str, started: float, stack, images: int = N, **extra) -> None:
    """One line per scenario in the test output (-s or on failure), and appended to the file
    LOAD_TEST_REPORT names, if any: images, wall time, how the deliveries went."""
    line = (
        f"[load] {label}: {images} images, {time.monotonic() - started:.1f}s wall, deliveries "
        f"{dict(delivery_summary(stack.eventarc.deliveries))} {extra}"
    )
    print("\n" + line)
    if os.environ.get("LOAD_TEST_REPORT"):
        with open(os.environ["LOAD_TEST_REPORT"], "a", encoding="utf-8") as out:
            out.write(line + "\n")


# --- 1. duplicated and reordered events; newer generations ----------------------------------------


@pytest.fixture(scope="module")
def generations_run(tmp_path_factory):
    """One run for the two tests below. Four groups of names:

    - plain: one generation; its event delivered 1-3 times, everything shuffled;
    - late: a newer generation uploaded after the first was processed, delivered 1-3 times,
      then the older generation's event delivered again (must be skipped);
    - early: the newer generation uploaded before any event was delivered, then both
      generations' events delivered 1-3 times, shuffled with the rest;
    - in flight: the newer generation uploaded while the older one is being processed (the
      model holds its answer), its events delivered and acknowledged, then the older
      generation's answer released.
    """
    tmp_path = tmp_path_factory.mktemp("generations")
    rng = random.Random(5)
    names = image_names(N)
    late = {name for name, i in names.items() if i % 25 == 6}
    early = {name for name, i in names.items() if i % 25 == 19}
    in_flight = {name for name, i in names.items() if i % 40 == 12}
    in_flight_ids = {names[name]: name for name in in_flight}
    arrived = {i: threading.Event() for i in in_flight_ids}
    release = {i: threading.Event() for i in in_flight_ids}

    callers: set[int] = set()

    def before_answer(image_id: int, attempt: int, port: int) -> None:
        if image_id % 10 == 0 and "stack" in holder:
            callers.add(holder["stack"].pid_of_connection(port, gemini_port))
        if image_id in arrived and attempt == 1:
            arrived[image_id].set()
            release[image_id].wait(30)  # held until the newer generation is done (or 30 s)

    holder: dict[str, object] = {}
    gemini_port = free_port()
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        LoadGemini(port=gemini_port, before_answer=before_answer) as gemini,
        load_stack(tmp_path, monkeypatch, gemini_port=gemini_port, threads=16) as stack,
    ):
        holder["stack"] = stack
        started = time.monotonic()
        first = stack.upload_images(names)
        second = {}
        second.update(stack.upload_images({name: newer_id(names[name]) for name in early}))

        driver_errors: list[str] = []

        def newer_while_older_in_flight(image_id: int, copies: int) -> None:
            name = in_flight_ids[image_id]
            try:
                if not arrived[image_id].wait(240):
                    driver_errors.append(f"{name}: the older generation never reached the model")
                    return
                info = stack.upload(name, make_image(newer_id(image_id)))
                second[name] = info
                for _ in range(copies):
                    if not stack.eventarc.deliver(info).acknowledged:
                        driver_errors.append(f"{name}: the newer generation's event was not acknowledged")
            finally:
                release[image_id].set()

        drivers = [
            threading.Thread(target=newer_while_older_in_flight, args=(i, rng.randint(1, 2))) for i in in_flight_ids
        ]
        for driver in drivers:
            driver.start()
        events = shuffled_copies(list(first.values()) + [second[name] for name in early], rng)
        first_wave = stack.eventarc.deliver_all(events)
        for driver in drivers:
            driver.join(timeout=300)

        second.update(stack.upload_images({name: newer_id(names[name]) for name in late}))
        stack.eventarc.deliver_all(shuffled_copies([second[name] for name in late], rng))
        # Older generations arriving after the newer one was processed: must be skipped.
        stale = stack.eventarc.deliver_all([first[name] for name in sorted(late | early | in_flight)])

        expected = []
        superseded: dict[str, set[int]] = {}
        for name, image_id in names.items():
            if name in second:
                expected.append(expected_for(name, int(second[name]["generation"]), newer_id(image_id)))
                superseded[name] = {int(first[name]["generation"])}
            else:
                expected.append(expected_for(name, int(first[name]["generation"]), image_id))
        state = EndState.of(stack)
        problems = check_end_state(stack, expected, superseded=superseded, state=state)
        report(
            "duplicates + reordering + newer generations",
            started,
            stack,
            events=len(events),
            gemini_calls=sum(gemini.attempts.values()),
            model_calls_at_once=gemini.max_in_flight,
            worker_pids_calling=len(callers - {None}),
        )
        result = {
            "names": names,
            "late": late,
            "early": early,
            "in_flight": in_flight,
            "first": first,
            "second": second,
            "problems": problems,
            "state": state,
            "stack_deliveries": list(stack.eventarc.deliveries),
            "first_wave": first_wave,
            "stale": stale,
            "gemini_attempts": Counter(gemini.attempts),
            "unreadable": gemini.unreadable,
            "driver_errors": driver_errors,
            "max_in_flight": gemini.max_in_flight,
            "callers": callers - {None},
            "workers": stack.worker_pids(),
            "journal_mode": sqlite3.connect(stack.sqlite_path).execute("PRAGMA journal_mode").fetchone()[0],
        }
    yield result  # the stack is stopped by now


def _names_in(problem: str) -> set[str]:
    return {match for match in re.findall(r"img\d{4}", problem)}


def _stems(names) -> set[str]:
    return {re.search(r"img\d{4}", name).group(0) for name in names}


@pytest.mark.timeout(420)
def test_duplicated_and_reordered_events_leave_exactly_one_result_per_image(generations_run):
    run = generations_run
    racing = _stems(run["early"] | run["in_flight"])
    problems = [p for p in run["problems"] if not _names_in(p) & racing]
    assert not problems, summarize(problems)
    assert run["unreadable"] == 0 and not run["driver_errors"], run["driver_errors"]
    # Several worker processes, each with several requests at once, shared one SQLite file.
    assert run["journal_mode"] == "wal"
    assert len(run["callers"]) >= 2 and run["callers"] <= set(run["workers"]), (run["callers"], run["workers"])
    assert run["max_in_flight"] > 16, run["max_in_flight"]  # more than one worker's THREADS
    assert all(d.acknowledged for d in run["stack_deliveries"]), delivery_summary(run["stack_deliveries"])
    # Duplicates really were concurrent and redundant: more deliveries than images...
    assert len(run["first_wave"]) > 1.5 * len(run["names"])
    # ...yet the model was asked once per image generation, apart from duplicates that were
    # already past their marker check when the first copy finished.
    plain_ids = [i for name, i in run["names"].items() if name not in run["second"]]
    assert all(run["gemini_attempts"][i] >= 1 for i in plain_ids)
    # An older generation delivered after the newer one was processed: skipped, no row.
    for name in run["late"]:
        older = int(run["first"][name]["generation"])
        rows = run["state"].image_rows(name, older)
        status = expected_for(name, older, run["names"][name]).status
        assert len(rows) == 1 and rows[0]["status"] == status, (name, rows)


@pytest.mark.timeout(60)
def test_a_newer_generation_wins_over_an_older_one_still_in_flight(generations_run):
    run = generations_run
    racing = _stems(run["early"] | run["in_flight"])
    problems = [p for p in run["problems"] if _names_in(p) & racing]
    for name in run["early"] | run["in_flight"]:
        older = int(run["first"][name]["generation"])
        for row in run["state"].image_rows(name, older):
            # Read after it was replaced: a failed row (object gone) is fine; a result is not.
            if row["status"] != "failed":
                problems.append(f"{name}#{older} (superseded) got a {row['status']} row")
    assert not problems, summarize(problems, limit=40)


# --- 2. model and storage faults --------------------------------------------------------------


@pytest.mark.timeout(360)
def test_model_and_storage_faults_are_retried_to_the_exact_end_state(tmp_path, monkeypatch):
    """Gemini: bursts of 429 with RetryInfo delays, 500s, 503s, answers slower than the request
    timeout, truncated answers (those images end `partial` with their complete objects).
    Storage: 503s and 429s on uploads, downloads, metadata reads and listings."""
    names = image_names(N)
    lock = threading.Lock()
    served = Counter()
    burst = range(N // 3, N // 3 + min(60, N // 3))  # 60 model calls in a row: 429 with a 2 s delay

    def truncates(image_id: int) -> bool:
        return image_id % 12 == 5 and object_count(image_id) >= 2

    def plan(image_id: int, attempt: int):
        with lock:
            served["calls"] += 1
            number = served["calls"]
        if number in burst:
            return rate_limited("2s")
        kind = image_id % 12
        if truncates(image_id):
            return Answer(truncated_text(image_id), finish_reason="MAX_TOKENS")
        if kind == 1 and attempt <= 2:
            return rate_limited("1s")
        if kind == 2 and attempt == 1:
            return internal_error()
        if kind == 3 and attempt == 1:
            return Answer(answer_text(image_id), delay=3.5)  # past GEMINI_TIMEOUT_S=2
        if kind == 4 and attempt == 1:
            return unavailable()
        return None

    port = free_port()
    env = {"GEMINI_TIMEOUT_S": "2", "RETRY_DEADLINE_S": "90"}
    with (
        LoadGemini(port=port, plan=plan) as gemini,
        load_stack(tmp_path, monkeypatch, gemini_port=port, env=env) as stack,
    ):
        started = time.monotonic()
        infos = stack.upload_images(names)
        rng = random.Random(7)
        stop = threading.Event()
        injected = Counter()

        def inject_storage_faults() -> None:
            # A round of faults per 50 storage requests (so at most ~8 % of them fail, whatever
            # the traffic), until 80 % of the events are acknowledged.
            rounds = [
                dict(n=4, method="POST", path=r"^/upload/", status=503),
                dict(n=2, method="GET", path=r"^/download/", status=503),
                dict(n=2, method="GET", path=r"/o/processed-markers/", status=503),
                dict(n=2, method="GET", path=r"/o$", status=503),
                dict(n=2, method="POST", path=r"^/upload/", status=429, retry_after=1),
            ]
            k, last = 0, 0
            while not stop.wait(0.05):
                seen = len(stack.emulator._state.seen)
                if seen - last >= 50:
                    last = seen
                    spec = rounds[k % len(rounds)]
                    stack.emulator.fail_next(**spec)
                    injected[f"{spec['method']} {spec['path']} {spec['status']}"] += spec["n"]
                    k += 1

        done = Counter()

        def acknowledged(_future) -> None:
            with lock:
                done["events"] += 1
                if done["events"] >= 0.8 * len(names):
                    stop.set()

        injector = threading.Thread(target=inject_storage_faults, daemon=True)
        injector.start()
        order = list(infos.values())
        rng.shuffle(order)
        futures = [stack.eventarc.submit(info) for info in order]
        for future in futures:
            future.add_done_callback(acknowledged)
        for future in futures:
            future.result()
        stop.set()
        injector.join()
        unserved = pending_faults(stack.emulator)
        with stack.emulator._state.lock:
            for fault in stack.emulator._state.faults:
                fault.remaining = 0  # the checks below read the bucket: no faults there

        expected = [
            expected_for(name, int(infos[name]["generation"]), i, truncated=truncates(i)) for name, i in names.items()
        ]
        problems = check_end_state(stack, expected)
        retried = retry_log_counts(stack)
        report(
            "model + storage faults",
            started,
            stack,
            gemini_faults=dict(gemini.faults),
            storage_faults_served=sum(injected.values()) - unserved,
        )

    assert not problems, summarize(problems)
    assert all(d.acknowledged for d in stack.eventarc.deliveries), delivery_summary(stack.eventarc.deliveries)
    assert gemini.unreadable == 0
    assert gemini.faults["http 429"] >= len(burst) and gemini.faults["http 500"] and gemini.faults["http 503"]
    assert gemini.faults["slow answer"] and gemini.faults["truncated"]
    assert sum(injected.values()) - unserved >= max(5, N // 5), (injected, unserved)
    assert Counter(e.status for e in expected)["partial"] > 0
    # The function saw each kind of fault and retried it (its own log lines say so).
    assert retried[("Gemini generateContent", "ReadTimeout")] >= gemini.faults["slow answer"], retried
    for cause in ("429", "500", "503"):
        assert retried[("Gemini generateContent", cause)], retried
    # The claim's create is each event's first request (a marker is only read when a claim exists).
    for what in ("storage write", "storage read", "claim", "crop list"):
        assert retried[(what, "503")], (what, retried)
    assert retried[("storage write", "429")], retried


# --- 3. the row sink rejecting batches (BigQuery insertAll stand-in) ----------------------------


@pytest.mark.timeout(180)
def test_row_sink_rejections_are_retried_or_recorded_and_replayable(tmp_path, monkeypatch):
    """insertAll answering 503 and 403 rateLimitExceeded, rejecting batches row by row as
    transient (backendError, timeout) and once as invalid. The transient ones are retried; the
    invalid one makes that image `failed` (visible in the images table), and the operators'
    replay with --redo failed completes it."""
    n = min(N, 60)
    names = image_names(n)
    port = free_port()
    with LoadGemini(port=port), load_stack(tmp_path, monkeypatch, gemini_port=port, bigquery=True) as stack:
        started = time.monotonic()
        bq = stack.bigquery
        infos = stack.upload_images(names)
        bq.fail_next(3, status=503)
        bq.fail_next(2, status=403, reason="rateLimitExceeded")
        order = list(infos.values())
        random.Random(3).shuffle(order)
        stack.eventarc.deliver_all(order[: n // 3])
        bq.reject_next(2, reason="backendError", message="backend error (load test)")
        bq.reject_next(1, reason="timeout", message="timeout (load test)")
        stack.eventarc.deliver_all(order[n // 3 : 2 * n // 3])
        bq.reject_next(1, reason="invalid", message="batch rejected (load test)")
        stack.eventarc.deliver_all(order[2 * n // 3 :])
        assert all(d.acknowledged for d in stack.eventarc.deliveries), delivery_summary(stack.eventarc.deliveries)

        failed = [row for row in stack.rows("images") if row["status"] == "failed"]
        assert len(failed) == 1, failed
        assert "batch rejected (load test)" in failed[0]["error_message"]
        assert stack.listing()[marker_name(failed[0]["source_name"])][1]["status"] == "failed"

        result = replay_cli(stack, "--redo", "failed", "--workers", "4")
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"{n - 1} duplicate" in result.stderr, result.stderr[-500:]

        expected = [expected_for(name, int(infos[name]["generation"]), i) for name, i in names.items()]
        problems = check_end_state(stack, expected, history=True)
        ids = Counter(row["row_id"] for row in stack.rows("objects"))
        report("BigQuery row sink faults", started, stack, images=n, bigquery_requests=bq.request_count)
    assert not problems, summarize(problems)
    assert max(ids.values()) == 1
    # History: the failed image has its failed row and, newer, its ok row; everything else one row.
    rows_per_image = Counter(row["source_name"] for row in stack.rows("images"))
    assert rows_per_image[failed[0]["source_name"]] == 2 and len(rows_per_image) == n
    assert sum(rows_per_image.values()) == n + 1


# --- 4. a worker process killed mid-image -----------------------------------------------------


@pytest.mark.timeout(360)
def test_a_worker_killed_mid_image_is_redelivered_to_the_exact_end_state(tmp_path, monkeypatch):
    """For a few images the model holds its first answer 4 s; meanwhile the gunicorn worker
    process waiting for it is found (by its TCP connection to the model) and SIGKILLed, taking
    that worker's other in-flight requests with it at whatever step they were. The platform
    got no answer for those events and redelivers them; the redelivery takes over the killed
    delivery's claim when its lease (the function timeout in production, 6 s here) expires."""
    names = image_names(N)
    ids = sorted(names.values())
    count = max(2, len(ids) // 100)  # 5 at the default 500; still two when LOAD_TEST_IMAGES is small
    victims = {ids[(k + 1) * len(ids) // (count + 1)] for k in range(count)}
    kills: dict[int, int | None] = {}  # victim -> the pid killed (None: its worker was already dead)
    holder: dict[str, object] = {}
    lock = threading.Lock()

    def before_answer(image_id: int, attempt: int, client_port: int) -> None:
        if image_id not in victims or attempt != 1:
            return
        stack = holder["stack"]
        time.sleep(0.5)
        with lock:
            pid = stack.pid_of_connection(client_port, port)
            kills[image_id] = pid
            if pid is not None:
                kill(pid)
        time.sleep(3.5)

    port = free_port()
    with (
        LoadGemini(port=port, before_answer=before_answer),
        load_stack(
            tmp_path, monkeypatch, gemini_port=port, eventarc={"max_attempts": 8}, env={"CLAIM_LEASE_S": "6"}
        ) as stack,
    ):
        holder["stack"] = stack
        started = time.monotonic()
        stack.wait_for_workers(3)
        infos = stack.upload_images(names)
        order = [info for info in infos.values() if names[info["name"]] not in victims]
        random.Random(11).shuffle(order)
        # Victims spread evenly through the run, so each kill usually finds a different worker.
        for k, victim in enumerate(sorted(victims)):
            order.insert((k + 1) * len(order) // (len(victims) + 1), infos[f"raw/cam{victim % 4}/img{victim:04d}.jpg"])
        deliveries = stack.eventarc.deliver_all(order)
        workers_after = stack.wait_for_workers(3)
        expected = [expected_for(name, int(infos[name]["generation"]), i) for name, i in names.items()]
        problems = check_end_state(stack, expected)
        killed = {pid for pid in kills.values() if pid is not None}
        report(
            "worker killed mid-image",
            started,
            stack,
            workers_killed=len(killed),
            images_redelivered=len({d.name for d in deliveries if len(d.attempts) > 1}),
        )

    assert set(kills) == victims, (kills, victims)
    assert len(killed) >= (len(victims) + 1) // 2, kills  # most kills found a live worker
    assert killed and not set(workers_after) & killed  # gunicorn replaced every killed worker
    redelivered = {names[d.name] for d in deliveries if len(d.attempts) > 1}
    assert redelivered >= victims, (redelivered, victims)
    assert all(d.acknowledged for d in deliveries), delivery_summary(deliveries)
    assert not problems, summarize(problems)


# --- 5. Gemini down for longer than the retry deadline ------------------------------------------


def _offline_problems(stack, infos: dict[str, dict], state: EndState) -> list[str]:
    """Every image answered by the offline fallback, consistently: rows, crops, marker."""
    problems = []
    live = state.listing
    for name, info in infos.items():
        generation = int(info["generation"])
        rows = state.image_rows(name, generation)
        if len(rows) != 1:
            problems.append(f"{name}: {len(rows)} image rows")
            continue
        row = rows[0]
        if row["detector"] != "offline" or not (row["fallback_reason"] or "").startswith("Gemini kept failing"):
            problems.append(f"{name}: detector {row['detector']}, fallback_reason {row['fallback_reason']!r}")
        if row["status"] not in ("ok", "empty"):
            problems.append(f"{name}: status {row['status']} {row['error_type']}")
        objects = state.object_rows(name, generation)
        crops = {n for n in live if n.startswith(crop_name(name, 1)[:-8])}
        if len(objects) != row["objects_found"] or crops != {crop_name(name, k) for k in range(1, len(objects) + 1)}:
            problems.append(f"{name}: {row['objects_found']} found, {len(objects)} object rows, {len(crops)} crops")
        marker = live.get(marker_name(name), (0, {}))[1]
        if marker.get("fallback") != "true" or marker.get("source-generation") != str(generation):
            problems.append(f"{name}: marker {marker}")
        if overview_name(name) not in live:
            problems.append(f"{name}: no overview")
    return problems


@pytest.mark.timeout(420)
def test_gemini_down_with_offline_fallback_then_replayed_with_gemini(tmp_path, monkeypatch):
    """OFFLINE_FALLBACK=true: every image is answered by the offline detector (rows say so, with
    the reason; markers say fallback), nothing waits for redelivery. When Gemini is back,
    `replay --redo fallback` redoes them all with Gemini: the newest row of every image is
    Gemini's, its crops replace the offline ones exactly, the offline rows stay as history."""
    names = image_names(N)
    port = free_port()  # nothing listens there until Gemini "comes back"
    env = {"OFFLINE_FALLBACK": "true", "RETRY_DEADLINE_S": "2", "GEMINI_TIMEOUT_S": "1"}
    with load_stack(tmp_path, monkeypatch, gemini_port=port, env=env, threads=16) as stack:
        started = time.monotonic()
        infos = stack.upload_images(names)
        deliveries = stack.eventarc.deliver_all(list(infos.values()))
        assert all(d.acknowledged and len(d.attempts) == 1 for d in deliveries), delivery_summary(deliveries)
        state = EndState.of(stack)
        problems = _offline_problems(stack, infos, state)
        assert not problems, summarize(problems)
        offline_rows = len(state.objects)
        down_s = time.monotonic() - started

        with LoadGemini(port=port) as gemini:
            result = replay_cli(stack, "--redo", "fallback", "--workers", "8")
        assert result.returncode == 0, result.stderr[-2000:]
        expected = [expected_for(name, int(infos[name]["generation"]), i) for name, i in names.items()]
        state = EndState.of(stack)
        problems = check_end_state(stack, expected, history=True, state=state)
        report(
            "Gemini down, offline fallback, then replay",
            started,
            stack,
            outage_phase_s=round(down_s, 1),
            replay_tail=result.stderr.strip().splitlines()[-1],
        )
    assert not problems, summarize(problems)
    assert len([r for r in state.objects if r["detector"] == "offline"]) == offline_rows
    assert Counter(r["source_name"] for r in state.images) == Counter({name: 2 for name in names})
    assert sum(gemini.attempts.values()) == N


@pytest.mark.timeout(420)
def test_gemini_down_without_fallback_fails_events_then_replay_processes_everything(tmp_path, monkeypatch):
    """OFFLINE_FALLBACK=false: every delivery fails (HTTP 500 after RETRY_DEADLINE_S) and the
    platform's redeliveries run out; nothing is marked done and no half result is left as if it
    were one. `replay` afterwards processes every image exactly."""
    names = image_names(N)
    port = free_port()
    env = {"OFFLINE_FALLBACK": "false", "RETRY_DEADLINE_S": "1.5", "GEMINI_TIMEOUT_S": "1"}
    with load_stack(
        tmp_path, monkeypatch, gemini_port=port, env=env, threads=16, eventarc={"max_attempts": 2, "backoff_s": 0.2}
    ) as stack:
        started = time.monotonic()
        infos = stack.upload_images(names)
        deliveries = stack.eventarc.deliver_all(list(infos.values()))
        assert all(d.attempts == [500, 500] for d in deliveries), delivery_summary(deliveries)
        state = EndState.of(stack)
        assert state.images == [] and state.objects == []
        assert sorted(state.listing) == sorted(infos)  # no outputs, no markers: nothing claims to be done
        down_s = time.monotonic() - started

        with LoadGemini(port=port) as gemini:
            result = replay_cli(stack, "--workers", "8")
        assert result.returncode == 0, result.stderr[-2000:]
        expected = [expected_for(name, int(infos[name]["generation"]), i) for name, i in names.items()]
        problems = check_end_state(stack, expected)
        report(
            "Gemini down, no fallback, redelivery exhausted, then replay",
            started,
            stack,
            outage_phase_s=round(down_s, 1),
            replay_tail=result.stderr.strip().splitlines()[-1],
        )
    assert not problems, summarize(problems)
    assert sum(gemini.attempts.values()) == N


# --- 7. an older generation failing after a newer one finished ----------------------------------


@pytest.mark.timeout(120)
def test_an_older_generation_failing_late_does_not_replace_the_newer_marker(tmp_path, monkeypatch):
    """Deterministic: the older generation's download answers 503 with Retry-After: 2; while it
    waits, the newer generation is uploaded, delivered and acknowledged; the older one's retry
    then finds its generation gone (a failed row, as the README says)."""
    names = {f"raw/cam9/late{i}.jpg": i + 1 for i in range(5)}
    port = free_port()
    with (
        LoadGemini(port=port) as gemini,
        load_stack(tmp_path, monkeypatch, gemini_port=port, workers=2, threads=8) as stack,
    ):
        older = stack.upload_images(names)
        for name in names:
            stack.emulator.fail_next(
                1, method="GET", path=f"^/download/.*/o/{re.escape(name)}$", status=503, retry_after=2
            )
        pending = [stack.eventarc.submit(older[name]) for name in names]
        deadline = time.monotonic() + 10
        while pending_faults(stack.emulator) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pending_faults(stack.emulator) == 0
        newer = stack.upload_images({name: newer_id(i) for name, i in names.items()})
        assert all(d.acknowledged for d in stack.eventarc.deliver_all(newer.values()))
        assert all(future.result().acknowledged for future in pending)

        state = EndState.of(stack)
        for name in names:
            (row,) = state.image_rows(name, int(older[name]["generation"]))
            assert (row["status"], row["error_type"]) == ("failed", "object_gone")
        expected = [expected_for(name, int(newer[name]["generation"]), newer_id(i)) for name, i in names.items()]
        problems = check_end_state(
            stack, expected, state=state, superseded={name: {int(older[name]["generation"])} for name in names}
        )
        # Eventarc may redeliver the newer generation's event: that must be a no-op.
        calls = sum(gemini.attempts.values())
        stack.eventarc.deliver_all(newer.values())
        if sum(gemini.attempts.values()) != calls:
            problems.append(
                f"redelivering the newer events called the model {sum(gemini.attempts.values()) - calls} "
                f"more times (the marker no longer named their generation)"
            )
    assert not problems, summarize(problems)


# --- 8. same-stem pairs, simultaneous copies and unreadable answers -------------------------------


def _png(image_id: int) -> bytes:
    """`make_image(image_id)` as a PNG: a twin that differs from its JPEG sibling in format and pixels."""
    with Image.open(io.BytesIO(make_image(image_id))) as image:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.timeout(420)
def test_same_stem_pairs_simultaneous_copies_and_unreadable_answers_end_exactly(tmp_path, monkeypatch):
    """What real delivery does, all at once:

    - every tenth `imgNNNN.jpg` has a twin `imgNNNN.png` (another picture, same stem), whose
      event is posted at the same moment as the JPEG's;
    - a third of the images get 2-5 copies of their event posted together, while the first
      copy's model call is held 1 s (so the copies really overlap);
    - one model call in eight answers HTTP 200 with a body the client cannot read (an HTML page,
      gzip without its header, JSON the SDK's types reject) on the first attempt.

    End state: every image, twins included, has exactly its own rows, crops, overview, marker and
    claim; the model was asked once per image, plus once per unreadable answer.
    """
    names = image_names(N)
    twins = {name.replace(".jpg", ".png"): i + 2048 for name, i in names.items() if i % 10 == 7}
    unreadable = {i for i in list(names.values()) + list(twins.values()) if i % 8 == 5}
    copied = {i for i in names.values() if i % 3 == 0}
    kinds = (lambda i: not_json(), lambda i: gzip_without_header(answer_text(i)), lambda i: rejected_by_sdk())

    def plan(image_id: int, attempt: int):
        if image_id in unreadable and attempt == 1:
            return kinds[image_id // 8 % 3](image_id)
        return None

    def before_answer(image_id: int, attempt: int, _port: int) -> None:
        if image_id in copied and attempt == 1:
            time.sleep(1.0)

    port = free_port()
    with (
        LoadGemini(port=port, plan=plan, before_answer=before_answer) as gemini,
        load_stack(tmp_path, monkeypatch, gemini_port=port) as stack,
    ):
        started = time.monotonic()
        infos = stack.upload_images(names)
        for name, image_id in twins.items():
            blob = stack.bucket.blob(name)
            blob.upload_from_string(_png(image_id), content_type="image/png")
            infos[name] = {
                "name": name,
                "generation": str(blob.generation),
                "contentType": "image/png",
                "size": str(blob.size),
            }
        rng = random.Random(17)
        groups = []
        for name, image_id in names.items():
            group = [infos[name]] * (rng.randint(2, 5) if image_id in copied else 1)
            twin = name.replace(".jpg", ".png")
            if twin in twins:
                group.append(infos[twin])
                rng.shuffle(group)
            groups.append(group)
        rng.shuffle(groups)
        deliveries = stack.eventarc.deliver_all([info for group in groups for info in group])
        ids = {**names, **twins}
        expected = [expected_for(name, int(infos[name]["generation"]), image_id) for name, image_id in ids.items()]
        problems = check_end_state(stack, expected)
        report(
            "same-stem pairs + simultaneous copies + unreadable answers",
            started,
            stack,
            images=len(ids),
            events=len(deliveries),
            gemini_calls=sum(gemini.attempts.values()),
            gemini_faults=dict(gemini.faults),
        )

    assert all(d.acknowledged for d in deliveries), delivery_summary(deliveries)
    assert not problems, summarize(problems)
    assert len(deliveries) > len(ids) + len(copied)  # copies really were sent
    assert gemini.unreadable == 0 and gemini.faults["unreadable 200"] == len(unreadable)
    calls = {image_id: 1 + (image_id in unreadable) for image_id in ids.values()}
    assert dict(gemini.attempts) == calls, {
        i: (gemini.attempts[i], n) for i, n in calls.items() if gemini.attempts[i] != n
    }
