"""gcp-storage-emulator in its own process, for the throughput benchmark (benchmarks/bench.py).

    python -m benchmarks.storage_server [--no-meta-dump]   # prints "READY <url>", serves until SIGTERM

The stock emulator (its `Storage`, in memory, and its `RequestHandler`: one request at a time,
HTTP/1.0, a new connection per request) with two benchmark-only changes:

- a listen backlog of 1024 instead of http.server's 5. With the stock 5, dozens of function
  threads connecting at once get SYNs dropped and wait out 1 s TCP retransmits, which would
  measure the kernel's retry timer rather than the function;
- `GET /__bench/stats`: requests served and seconds spent serving them (the server is
  single-threaded, so busy seconds / wall seconds is its utilisation; near 1.0 it is the
  bottleneck).

`--no-meta-dump` also skips the stock store's rewrite of its whole metadata document (every
object's metadata, JSON with indent) after each write, which makes each write cost time
proportional to the objects already stored; only persistence across restarts, which an
in-memory store never has, is lost. The benchmark uses the stock store by default and this
only for a comparison row.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from functools import partial
from http.server import HTTPServer

from gcp_storage_emulator.server import RequestHandler
from gcp_storage_emulator.storage import Storage

STATS_PATH = "/__bench/stats"


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
            body = json.dumps({"requests": server.requests_served, "busy_s": server.busy_s,
                               "objects": objects}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-meta-dump", action="store_true")
    args = parser.parse_args(argv)
    store = (NoMetaDumpStorage if args.no_meta_dump else Storage)(use_memory_fs=True)
    httpd = StatsServer(("127.0.0.1", args.port), partial(Handler, store))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown, daemon=True).start())
    host, port = httpd.server_address[:2]
    print(f"READY http://{host}:{port}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.05)
    finally:
        httpd.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
