"""The command line: results, --json, and bad input as one line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, aura


def test_load_twice_with_one_seed_stores_once(cli_env: dict[str, str]) -> None:
    first = aura("load", "--seed", "3", "--commands", "120", "--duplicate-rate", "0.3", "--json",
                 env=cli_env)
    second = aura("load", "--seed", "3", "--commands", "120", "--duplicate-rate", "0.3", "--json",
                  env=cli_env)
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["events_stored"] == 120
    assert a["duplicates_absorbed"] == a["duplicates_sent"] > 0
    assert b["events_stored"] == 0 and b["duplicates_absorbed"] == b["commands_sent"]


def test_db_init_twice_is_harmless(empty_db_url: str) -> None:
    for _ in range(2):
        result = aura("db", "init", "--database-url", empty_db_url, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["initialised"] is True


def test_missing_tables_suggest_db_init(empty_db_url: str) -> None:
    result = aura("load", "--commands", "5", "--database-url", empty_db_url)
    assert_one_line_error(result, "aura-es db init")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mysql://root@localhost/x", "postgresql://"),
        ("postgresql://postgres@127.0.0.1:1/x", "cannot connect"),
        ("postgresql://postgres:secret@127.0.0.1:99999/x", "invalid port"),
    ],
)
def test_bad_database_urls(url: str, needle: str) -> None:
    result = aura("db", "init", "--database-url", url)
    assert_one_line_error(result, needle)
    assert "secret" not in result.stderr


def test_no_database_configured_names_both_ways(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_ES_")}
    env["AURA_ES_DATA_DIR"] = str(tmp_path)
    assert_one_line_error(aura("db", "init", env=env), "aura-es up", "AURA_ES_DATABASE_URL")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["load", "--duplicate-rate", "2"], "--duplicate-rate"),
        (["load", "--commands", "0"], "--commands"),
        (["idempotency", "prune", "--older-than", "soon"], "--older-than"),
    ],
)
def test_bad_arguments(cli_env: dict[str, str], args: list[str], needle: str) -> None:
    assert_one_line_error(aura(*args, env=cli_env), needle)


def test_prune_reports_json(cli_env: dict[str, str]) -> None:
    aura("load", "--commands", "10", "--duplicate-rate", "0", env=cli_env)
    result = aura("idempotency", "prune", "--older-than", "1d", "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["deleted"] == 0


@pytest.mark.slow
def test_up_reuses_running_services_and_down_stops_them(tmp_path: Path) -> None:
    data_dir = Path("/tmp") / f"aura-up-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_ES_")}
    try:
        first = aura("up", "--data-dir", str(data_dir), "--json", env=env)
        assert first.returncode == 0, first.stderr
        urls = json.loads(first.stdout)
        again = json.loads(aura("up", "--data-dir", str(data_dir), "--json", env=env).stdout)
        assert again == urls
        # The generated NATS credentials stay in the state file, readable by its owner only.
        assert urls["nats_url"].startswith("nats://aura:***@127.0.0.1:")
        state = Path(urls["state_file"])
        assert state.stat().st_mode & 0o077 == 0
        secret = json.loads(state.read_text())["nats_url"].split(":")[2].split("@")[0]
        assert len(secret) >= 32 and secret not in first.stdout + first.stderr
        env["AURA_ES_DATA_DIR"] = str(data_dir)
        assert aura("db", "init", env=env).returncode == 0
        loaded = aura("load", "--commands", "20", "--json", env=env)
        assert json.loads(loaded.stdout)["events_stored"] == 20
        down = json.loads(aura("down", "--data-dir", str(data_dir), "--json", env=env).stdout)
        assert down["stopped"] == {"postgres": True, "nats": True}
        assert_one_line_error(aura("db", "init", env=env), "aura-es up")
    finally:
        aura("down", "--data-dir", str(data_dir), env=env)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)
