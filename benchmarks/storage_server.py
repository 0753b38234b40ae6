"""The throughput benchmark's Cloud Storage stand-in, in a process of its own (benchmarks/bench.py).

    python -m benchmarks.storage_server [--impl memory|emulator] [--no-meta-dump] [--round-trip-ms MS]
    # prints "READY <url>", serves until SIGTERM

Both are stand-ins for Cloud Storage used only in tests and benchmarks; the function talks to
either through the real google-cloud-storage client (STORAGE_EMULATOR_HOST).

- `memory` (the default): `devtools.standins.gcs_server`, a threaded in-memory server of the JSON API
  subset the client uses, with keep-alive connections. Like real Cloud Storage it serves requests
  in parallel and is never what a benchmark cell waits for. `--round-trip-ms`: each request
  waits that long before its answer, as a network round trip to Cloud Storage would.
- `emulator`: the stock gcp-storage-emulator (its `Storage`, in memory, and its
  `RequestHandler`: one request at a time, HTTP/1.0, a new connection per request), kept for
  comparison rows, with two benchmark-only changes: a listen backlog of 1024 instead of
  http.server's 5 (with 5, dozens of function threads connecting at once get SYNs dropped and
  wait out 1 s TCP retransmits), and `--no-meta-dump`, which skips the stock store's rewrite of
  its whole metadata document (every object's metadata, JSON with indent) after each write.

`GET /__bench/stats` (both): requests served, seconds spent serving them (summed over threads
for `memory`; for the single-threaded emulator, busy seconds / wall seconds is its utilisation,
and near 1.0 it is the bottleneck) and objects stored.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from http.server import HTTPServer

STATS_PATH = "/__bench/stats"


def emulator_server(no_meta_dump: bool) -> HTTPServer:
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    class NoMetaDumpStorage(Storage):
        def _write_config_to_file(self) -> None:
            pass

    class StatsServer(HTTPServer):
        request_queue_size = 1024
        requests_served = 0
        busy_s = 0.0

        def process_request(self, request, client_address) -> None:
            start = time.perf_counter()
            try:
                super().process_request(request, client_address)
            finally:
                self.busy_s += time.perf_counter() - start
                self.requests_served += 1

    class Handler(RequestHandler):
        def do_GET(self) -> None:
            if self.path == STATS_PATH:
                server = self.server
                objects = sum(len(names) for names in self.storage.objects.values())
                body = json.dumps(
                    {"requests": server.requests_served, "busy_s": server.busy_s, "objects": objects}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

    store = (NoMetaDumpStorage if no_meta_dump else Storage)(use_memory_fs=True)
    return StatsServer(("127.0.0.1", 0), partial(Handler, store))


def memory_server() -> HTTPServer:
    from devtools.standins import gcs_server

    class Handler(gcs_server._Handler):
        def _route(self, method, seg, query, body):
            if method == "GET" and seg == STATS_PATH.strip("/").split("/"):
                server = self.server
                return (
                    200,
                    {},
                    {"requests": server.requests, "busy_s": server.handler_s, "objects": server.store.object_count()},
                )
            return super()._route(method, seg, query, body)

    server = gcs_server.GcsServer(("127.0.0.1", 0))
    server.RequestHandlerClass = Handler
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("memory", "emulator"), default="memory")
    parser.add_argument("--no-meta-dump", action="store_true", help="emulator only: skip the metadata rewrite")
    parser.add_argument(
        "--round-trip-ms",
        type=float,
        default=0.0,
        help="memory only: each request waits this long before its answer (a network round trip)",
    )
    args = parser.parse_args(argv)
    if args.round_trip_ms and args.impl != "memory":
        parser.error("--round-trip-ms needs --impl memory")
    from devtools.standins.gcs_server import serve_until_sigterm

    server = memory_server() if args.impl == "memory" else emulator_server(args.no_meta_dump)
    server.round_trip_s = args.round_trip_ms / 1000  # type: ignore[attr-defined]
    serve_until_sigterm(server)


if __name__ == "__main__":
    main()
