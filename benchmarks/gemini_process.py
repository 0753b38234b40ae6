"""The search benchmark's Gemini stand-in, in a process of its own (benchmarks/search.py).

    python -m benchmarks.gemini_process [--objects N]
    # prints "READY <base url>", then answers commands on stdin, one a line, until EOF:
    #   latency SECONDS   embedding answers wait SECONDS from now on; prints "OK"
    #   stats             prints the requests since the last "stats" as JSON; forgets them

It is `devtools.standins.gemini_server.FakeGeminiServer` (a stand-in, tests and benchmarks
only): detection requests (generateContent) get N boxes at once (`bench.gemini_answer`), embedding
requests (embedContent, batchEmbedContents) get one fixed vector per content after the set
latency (the stand-in's own colour-histogram vectors would add its decoding time to every call).
In its own process, so that answering the embedding calls (JSON, base64) is not on the measured
process's GIL, as Google's work is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    import numpy as np

    from benchmarks.bench import gemini_answer
    from devtools.standins.gemini_server import (
        MAX_EMBEDDING_DIMENSIONS,
        Answer,
        Embeddings,
        FakeGeminiServer,
        RecordedRequest,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10, help="boxes in every detection answer")
    args = parser.parse_args(argv)
    answer = Answer(gemini_answer(args.objects))
    latency = [0.0]
    # One fixed vector of full-precision values (as long as Google's JSON numbers), cut to the
    # length asked for: the stand-in spends no time computing vectors, only on the wire format.
    values = tuple(float(v) for v in np.random.default_rng(18).standard_normal(MAX_EMBEDDING_DIMENSIONS))

    def embedder(request: RecordedRequest) -> Embeddings:
        dimensions = request.output_dimensionalities[0] or MAX_EMBEDDING_DIMENSIONS
        return Embeddings(vector=values[:dimensions], delay=latency[0])

    with FakeGeminiServer(lambda request: answer, embedder=embedder) as server:
        print(f"READY {server.base_url}", flush=True)
        for line in sys.stdin:
            command, *arguments = line.split()
            if command == "latency":
                latency[0] = float(arguments[0])
                print("OK", flush=True)
            elif command == "stats":
                requests = server.requests
                server.reset(lambda request: answer, embedder=embedder)
                embedding = [r for r in requests if r.is_embedding]
                stats = {
                    "embedding_requests": len(embedding),
                    "embedded_contents": sum(len(r.embed_requests) for r in embedding),
                    "methods": sorted({r.method for r in embedding}),
                    "detection_requests": len(requests) - len(embedding),
                }
                print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
