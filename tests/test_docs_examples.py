"""The examples in docs/ run as written (against the test database)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def test_custom_aggregate_example_runs(db_url: str) -> None:
    (code,) = python_blocks("custom-aggregates.md")
    code = code.replace('"postgresql://postgres@127.0.0.1/postgres"', repr(db_url))
    # A real module: dataclasses look their class's module up in sys.modules.
    module = types.ModuleType("docs_accounts")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "docs/custom-aggregates.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    bank = module.__dict__["bank"]
    assert bank.head_position() == 2  # type: ignore[attr-defined]
    bank.close()  # type: ignore[attr-defined]
