"""`python -m workers`: `aura-es workers run` on the AURA application's own catalog."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from aura_es.cli.main import main

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    # The catalog names its handlers by module path (projections.debate_state:...): the
    # workers import them from the application's root, whatever the caller's directory.
    os.chdir(ROOT)
    main(["workers", "run", "--catalog", str(ROOT / "catalog" / "projection-catalog.yaml"),
          *sys.argv[1:]])
