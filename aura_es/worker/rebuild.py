"""A rebuild process the supervisor starts for a drifted projection (--rebuild-on-drift).

Run as ``python -m aura_es.worker.rebuild --projection NAME``. It is ``aura-es replay NAME``
without the terminal: progress goes to the structured log every few seconds.
Exit status: 0 once switched, 5 when another replay of the projection is running
(not restarted), 1 on a failure (restarted with backoff; it resumes).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from aura_es import heap
from aura_es.catalog import DEFAULT_CATALOG, load_catalog
from aura_es.db import connect
from aura_es.errors import AuraError
from aura_es.log import get_logger
from aura_es.replay import Rebuild, ReplayRunning
from aura_es.replay.rebuild import RebuildProgress
from aura_es.settings import Settings
from aura_es.worker.shutdown import follow_supervisor

EXIT_SWITCHED, EXIT_FAILED, EXIT_REFUSED = 0, 1, 5
LOG_EVERY_SECONDS = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aura_es.worker.rebuild")
    parser.add_argument("--projection", required=True)
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    args = parser.parse_args(argv)
    log = get_logger(component="rebuild", projection=args.projection)
    # Orphaned: stop as SIGTERM would (the rebuild resumes from its checkpoint later).
    follow_supervisor(lambda: os.kill(os.getpid(), signal.SIGTERM))
    try:
        spec = load_catalog(args.catalog).get(args.projection)
        with connect(Settings().resolved_database_url()) as conn:
            rebuild = Rebuild(conn, spec, log=log)
            heap.settle()
            last = 0.0

            def report(p: RebuildProgress) -> None:
                nonlocal last
                if time.monotonic() - last >= LOG_EVERY_SECONDS:
                    last = time.monotonic()
                    log.info("rebuilding", generation=rebuild.generation, done=p.done,
                             total=p.total, position=p.position, head=p.head)

            log.info("rebuild started", generation=rebuild.generation,
                     resumed_from=rebuild.resumed_from)
            try:
                result = rebuild.run(report)
            finally:
                rebuild.close()
        log.info("rebuild finished", **result.as_dict())
        return EXIT_SWITCHED
    except ReplayRunning as e:
        log.info("rebuild left to the replay already running", reason=str(e))
        return EXIT_REFUSED
    except (AuraError, KeyError) as e:
        log.error("rebuild failed", error=str(e))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
