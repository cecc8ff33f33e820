"""The catalog: validation errors that name file, line, projection and field; exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aura_es.catalog import load_catalog
from aura_es.cli.catalog import schema_json
from aura_es.errors import ConfigurationError
from tests.support.cli import assert_one_line_error, aura
from tests.support.workers import CATALOG, ROOT


def edited(tmp_path: Path, change: str, old: str, new: str) -> Path:
    text = CATALOG.read_text()
    assert old in text, old
    path = tmp_path / f"{change}.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_the_shipped_catalog_is_valid_and_names_three_projections() -> None:
    catalog = load_catalog(CATALOG)
    assert [p.name for p in catalog.projections] == [
        "DebateStateProjection", "AgentPerformanceProjection", "LLMSpendProjection"]
    assert sum(p.declarative is not None for p in catalog.projections) >= 1
    result = aura("catalog", "validate", str(CATALOG), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["warnings"] == []


def test_the_checked_in_json_schema_is_current() -> None:
    assert (ROOT / "catalog/projection-catalog.schema.json").read_text() == schema_json()
    assert json.loads(aura("catalog", "schema").stdout)["title"] == "Catalog"


@pytest.mark.parametrize(("old", "new", "needles"), [
    ("max_retries: 3", "max_retries: -1",
     [":18:", "'DebateStateProjection'", "error_handling.max_retries", "greater than"]),
    ("retry_policy: exponential_backoff", "retry_policy: sometimes",
     [":17:", "error_handling.retry_policy", "'exponential_backoff'"]),
    ("storage: debate_state", "storage: Debate State", [":12:", "storage", "identifier"]),
    ("name: AgentPerformanceProjection", "name: DebateStateProjection",
     ["two projections have the name 'DebateStateProjection'"]),
    ("storage: llm_spend", "storage: debate_state", ["two projections have the storage"]),
    ("    batch_size: 1000\n", "    batch_size: 1000\n    batch_size: 5\n",
     ["key 'batch_size' appears twice"]),
    ("duration: 1h", "duration: an hour", ["windowing.duration", "'an hour'"]),
    ("key: payload.agent_id", "key: agent id", ["declarative.key", "'agent id'"]),
    ("handler: projections.llm_spend:LLMSpendProjection",
     "handler: projections.llm_spend:LLMSpendProjection\n    declarative: {key: topic, "
     "fields: {n: {op: count}}}", ["'LLMSpendProjection'", "exactly one of"]),
    ("projections:\n", "projections: [\n", ["not valid YAML"]),
])
def test_bad_catalogs_fail_with_one_line_naming_the_place(
    tmp_path: Path, old: str, new: str, needles: list[str]
) -> None:
    path = edited(tmp_path, "bad", old, new)
    with pytest.raises(ConfigurationError) as error:
        load_catalog(path)
    message = str(error.value)
    assert "\n" not in message
    for needle in [str(path), *needles]:
        assert needle in message
    assert_one_line_error(aura("catalog", "validate", str(path)), str(path), needles[0])


def test_a_handler_that_does_not_import_is_exit_2_and_creates_nothing(
    tmp_path: Path, cli_env: dict[str, str], db_url: str
) -> None:
    path = edited(tmp_path, "handler", "projections.llm_spend:LLMSpendProjection",
                  "projections.nowhere:Missing")
    assert_one_line_error(aura("catalog", "validate", str(path)), "does not import")
    result = aura("workers", "run", "--catalog", str(path), env=cli_env)
    assert_one_line_error(result, "'LLMSpendProjection'", "projections.nowhere:Missing")
    from aura_es.db import connect

    with connect(db_url) as conn:
        assert conn.execute("SELECT to_regclass('debate_state')").fetchone() == (None,)


def test_an_unknown_event_topic_is_a_warning(tmp_path: Path) -> None:
    path = edited(tmp_path, "topic", "- aura.debate.failed.v1", "- aura.debate.exploded.v1")
    result = aura("catalog", "validate", str(path))
    assert result.returncode == 0
    assert "aura.debate.exploded.v1" in result.stderr and "warning" in result.stderr


def test_unknown_projection_names_are_exit_2(cli_env: dict[str, str]) -> None:
    for args in (["workers", "run", "--projection", "Nope"], ["query", "Nope"]):
        assert_one_line_error(aura(*args, "--catalog", str(CATALOG), env=cli_env),
                              "unknown projection 'Nope'", "DebateStateProjection")


def test_missing_catalog_file_is_exit_2(tmp_path: Path) -> None:
    assert_one_line_error(aura("catalog", "validate", str(tmp_path / "none.yaml")),
                          "cannot read it")


def test_yaml_round_trip_of_the_shipped_catalog_is_stable() -> None:
    data = yaml.safe_load(CATALOG.read_text())
    assert {p["name"] for p in data["projections"]} == {
        p.name for p in load_catalog(CATALOG).projections}


@pytest.mark.parametrize(("modules", "needle"), [
    ('["no.such.module"]', "cannot import 'no.such.module'"),
    ('["myapp.broken"]', "cannot import 'myapp.broken' (RuntimeError: on purpose)"),
    ('["a b"]', "event_modules"),
    ('["x\\u0000y"]', "event_modules"),
    ('["' + "m" * 5000 + '"]', "cannot import"),
    ('"aura_es.domain"', "event_modules"),
])
def test_event_modules_that_do_not_import_are_one_line_and_run_nothing(
    tmp_path: Path, modules: str, needle: str,
) -> None:
    """A catalog's event_modules are imported from the current directory, as handlers
    are; a name that is not a module path, or a module that does not import, is one line
    naming it (never a traceback), and no worker starts."""
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text("raise RuntimeError('on purpose')\n")
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG.read_text().replace(
        "event_modules:\n  - aura_es.domain", f"event_modules: {modules}"))
    result = subprocess.run([sys.executable, "-m", "aura_es.cli", "catalog", "validate",
                             str(path)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert_one_line_error(result, str(path), needle)
    assert len(result.stderr) < 1000  # a huge name is not echoed whole
