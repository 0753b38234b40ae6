"""The in-memory Cloud Storage stand-in for tests and benchmarks: `devtools.local_storage`,
the developer tooling `python -m devtools.local up` runs, re-exported here so there is one
copy (its docstring says what it serves).

    python -m devtools.standins.gcs_server --port 9023  # same as python -m devtools.local_storage
"""

from devtools.local_storage import *  # noqa: F403
from devtools.local_storage import (  # noqa: F401 - the private names tests and benchmarks use
    EVENTS_PATH,
    STATS_PATH,
    GcsError,
    GcsServer,
    Store,
    StoredObject,
    _Handler,
    main,
    running_gcs_server,
    select_fields,
    serve_until_sigterm,
)

if __name__ == "__main__":
    main()
