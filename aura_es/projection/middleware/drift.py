"""Drift: warns when the read model an engine attaches to was built by another definition
of the projection (a replay, or `--rebuild-on-drift`, rebuilds it)."""

from __future__ import annotations

from typing import Any

from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.middleware import Middleware
from aura_es.projection.state import checkpoints


class DriftWarning(Middleware):
    def __init__(self, log: Any) -> None:
        self.log = log

    def after_attach(self, engine: Engine) -> None:
        runner = engine.runner
        with runner.conn.cursor() as cur:
            checkpoint = checkpoints.get(cur, engine.spec.name)
        built_by = checkpoint.fingerprint if checkpoint else None
        if built_by is not None and built_by != runner.fingerprint:
            self.log.warning(
                "drift: the read model was built by another definition; rebuild it with"
                " `aura-es replay` or run workers with --rebuild-on-drift",
                built_by=built_by, definition=runner.fingerprint,
            )
