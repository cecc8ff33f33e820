"""The command line driven with generated arguments and catalogs: every outcome is a
result, or one line on stderr starting "error:" with exit status 2 and nothing written;
never a traceback. Run in-process (``main(argv)``), so hundreds of inputs take seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp
from aura_es.cli.main import main
from tests.support.hostile import hostile_text, json_like
from tests.support.workers import CATALOG

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
# The operating system cannot pass a NUL in an argument; everything else can arrive.
argument = hostile_text.map(lambda s: s.replace("\x00", ""))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 0), out, err


def assert_clean(code: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), err


def counts(app: AuraApp) -> tuple[Any, ...]:
    with app.connect() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM aura_events), (SELECT count(*) FROM aura_idempotency),"
            " (SELECT count(*) FROM aura_projection_checkpoints),"
            " (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')").fetchone()
        assert row is not None
        return tuple(row)


@pytest.mark.timeout(600)
def test_generated_arguments_are_results_or_one_line_errors(
    app: AuraApp, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AURA_ES_DATABASE_URL", app.database_url)
    monkeypatch.setenv("AURA_ES_CATALOG", str(CATALOG))
    app.start_debate("t", ["a"], idempotency_key="k")
    commands = st.one_of(
        st.tuples(st.just("query"), argument, st.just("--key"), argument),
        st.tuples(st.just("query"), st.just("DebateStateProjection"), st.just("--key"),
                  argument, st.just("--json")),
        st.tuples(st.just("replay"), argument, st.just("--dry-run")),
        st.tuples(st.just("replay"), st.just("DebateStateProjection"), st.just("--since"),
                  argument, st.just("--dry-run")),
        st.tuples(st.just("replay"), st.just("DebateStateProjection"), st.just("--aggregate"),
                  argument, st.just("--dry-run")),
        st.tuples(st.just("dlq"), st.just("show"), argument),
        st.tuples(st.just("idempotency"), st.just("prune"), st.just("--older-than"), argument),
        st.tuples(st.just("status"), st.just("--database-url"), argument),
        st.tuples(st.just("load"), st.just("--commands"), argument),
        st.tuples(st.just("erase"), argument, st.just("--reason"), argument),
        st.tuples(st.just("erase"), st.just("--verify"), argument, st.just("--json")),
        st.tuples(st.just("erase"), st.just("--reapply"), argument),
        st.tuples(st.just("erase"), st.just("--reapply"), st.just("--nats-url"),
                  st.just("nats://127.0.0.1:9"), st.just("--stream"), argument),
        st.lists(argument, max_size=4).map(tuple),
    )

    @FUZZ
    @given(argv=commands)
    def check(argv: tuple[str, ...]) -> None:
        before = counts(app)
        code, out, err = run(list(argv), capsys)
        assert_clean(code, out, err)
        if argv[:1] != ("load",) or code != 0:
            assert counts(app) == before, f"{argv} wrote something"

    check()


@pytest.mark.timeout(600)
def test_generated_catalogs_are_valid_or_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    shipped = yaml.safe_load(CATALOG.read_text())
    path = tmp_path / "catalog.yaml"

    def mutated(data: Any, where: list[Any], value: Any) -> Any:
        """The shipped catalog with one value (at a path drawn from it) replaced."""
        node = data
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value
        return data

    paths = st.sampled_from([
        ["projections", 0, "storage"], ["projections", 0, "batch_size"],
        ["projections", 0, "partitions"], ["projections", 1, "partitions"],
        ["projections", 0, "name"], ["projections", 1, "declarative", "key"],
        ["projections", 1, "windowing", "duration"], ["projections", 0, "source_events"],
        ["projections", 0, "error_handling", "max_retries"], ["projections", 0, "handler"],
        ["projections", 1, "declarative", "fields"], ["projections", 2, "update_strategy"],
        ["projections", 0, "error_handling", "circuit_breaker", "recovery_timeout"],
        ["projections", 0, "error_handling", "transient_exceptions"], ["projections"],
    ])
    texts = st.one_of(
        st.builds(lambda where, value: yaml.safe_dump(
            mutated(yaml.safe_load(yaml.safe_dump(shipped)), where, value)),
            paths, json_like.filter(lambda v: not (isinstance(v, float) and v != v))),
        hostile_text,
        st.sampled_from(["", "projections: &a [*a]", "a: !!python/name:os.system", "- - -",
                         "projections:\n" + "  - " * 2000 + "x", "\ufeffprojections: []"]),
    )

    @FUZZ
    @given(text=texts)
    def check(text: str) -> None:
        try:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        except UnicodeEncodeError:
            return
        code, out, err = run(["catalog", "validate", str(path)], capsys)
        assert_clean(code, out, err)

    check()
