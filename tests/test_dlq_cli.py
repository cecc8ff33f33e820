"""`aura-es dlq`: list, show, retry and discard; bad input is one line and exit 2."""

from __future__ import annotations

import json

from aura_es import AuraApp
from aura_es.db import connect
from aura_es.projection.engine.engine import Engine
from tests.support.cli import assert_one_line_error, aura
from tests.support.poison import POISONED_SPEC as SPEC
from tests.support.poison import PoisonedDebates


def one_dead_letter(app: AuraApp) -> int:
    debate = app.start_debate("p", ["a"], idempotency_key="p")
    app.add_argument(debate, "a", "for", "POISON", round=1, idempotency_key="p1")
    app.add_argument(debate, "a", "for", "fine", round=2, idempotency_key="p2")
    PoisonedDebates.fixed_up_to = 0
    with connect(app.database_url) as conn:
        engine = Engine(conn, SPEC)
        while engine.runner.position < app.head_position():
            engine.advance()
        row = conn.execute("SELECT id FROM aura_dead_letters").fetchone()
    assert row is not None
    return int(row[0])


def test_list_show_and_discard_keep_an_audit_record(
    app: AuraApp, cli_env: dict[str, str]
) -> None:
    letter = one_dead_letter(app)
    listed = json.loads(aura("dlq", "list", "--json", env=cli_env).stdout)
    assert [(r["id"], r["position"], r["parked_events"]) for r in listed] == [(letter, 2, 1)]
    shown = json.loads(aura("dlq", "show", str(letter), "--json", env=cli_env).stdout)
    assert shown["parked_positions"] == [3] and "PoisonError" in shown["traceback"]
    assert_one_line_error(aura("dlq", "discard", str(letter), env=cli_env), "--reason")
    done = aura("dlq", "discard", str(letter), "--reason", "bad data", "--json", env=cli_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(aura("dlq", "list", "--json", env=cli_env).stdout) == []
    audit = json.loads(aura("dlq", "list", "--all", "--json", env=cli_env).stdout)
    assert [(r["status"], r["discard_reason"]) for r in audit] == [("discarded", "bad data")]
    assert_one_line_error(aura("dlq", "discard", str(letter), "--reason", "x", env=cli_env),
                          "discarded, not open")


def test_bad_dlq_commands_are_exit_2_and_change_nothing(
    app: AuraApp, cli_env: dict[str, str]
) -> None:
    letter = one_dead_letter(app)
    assert_one_line_error(aura("dlq", "retry", "999", env=cli_env), "no dead letter with id 999")
    assert_one_line_error(aura("dlq", "retry", str(letter), "--all", env=cli_env),
                          "exactly one of")
    assert_one_line_error(aura("dlq", "retry", env=cli_env), "exactly one of")
    assert_one_line_error(aura("dlq", "retry", "--projection", "Nope", env=cli_env),
                          "unknown projection 'Nope'")
    assert_one_line_error(aura("dlq", "show", "12345", env=cli_env), "no dead letter")
    with connect(app.database_url) as conn:
        assert conn.execute("SELECT status, attempts FROM aura_dead_letters").fetchall() == [
            ("parked", 2)]
