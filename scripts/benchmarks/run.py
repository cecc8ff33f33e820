"""Entry point of `scripts/bench NAME`: runs one benchmark and prints its table."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aura_es.masterkey import MASTER_KEY, new_key_text

BENCHES = ("append", "projections", "mirror", "replay", "mesh", "failover", "cpu", "partitions",
           "erasure")


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    parser.add_argument("name", choices=BENCHES)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args, rest = parser.parse_known_args()
    # Every benchmark writes to databases of its own, made for the run: a master key of
    # its own too (the demo's data carries personal fields), for it and its processes.
    os.environ.setdefault(MASTER_KEY, new_key_text())
    module = importlib.import_module(f"scripts.benchmarks.{args.name}")
    module.main(quick=args.quick, as_json=args.json, argv=rest)


if __name__ == "__main__":
    main()
