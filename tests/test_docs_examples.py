"""The examples in docs/ run as written (against the test database)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import types
from pathlib import Path

from aura_es import AuraApp
from aura_es.db import connect
from tests.support.workers import env_for, wait_for

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


def test_user_projection_in_docs_runs_from_its_own_catalog(db_url: str) -> None:
    """The docs' user projection, outside aura-es, named only by its catalog."""
    examples = DOCS / "examples"
    app = AuraApp(db_url)
    app.start_debate("t", ["a"], idempotency_key="d1", tenant_id="acme")
    app.request_llm_call("acme", "openai", "gpt-4o", 10, idempotency_key="c1")
    app.request_llm_call("globex", "openai", "gpt-4o", 10, idempotency_key="c2")
    app.close()
    env = env_for(db_url)
    env["PYTHONPATH"] = f"{examples}:{env['PYTHONPATH']}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "aura_es.worker.worker", "--projection", "TenantActivityProjection",
         "--catalog", str(examples / "catalog.yaml"), "--poll-seconds", "0.2"], env=env,
    )

    def activity() -> list[tuple[object, ...]]:
        if conn.execute("SELECT to_regclass('tenant_activity')").fetchone() == (None,):
            return []
        return conn.execute("SELECT tenant_id, debates_started, llm_calls"
                            " FROM tenant_activity ORDER BY tenant_id").fetchall()

    with connect(db_url) as conn:
        rows = wait_for("both tenants", lambda: len(activity()) == 2 and activity())
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert rows == [("acme", 1, 1), ("globex", 0, 1)]
