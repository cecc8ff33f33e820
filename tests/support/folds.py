"""Read models computed independently from the raw event log, to compare workers against.

Written plainly and event by event, sharing no code with the projections under test.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg

from aura_es.masterkey import MASTER_KEY, LocalKeyProvider, parse_key
from aura_es.store import sealing

#: A read model as comparable rows: key -> the row's other values.
Rows = dict[Any, tuple[Any, ...]]


#: How far a fold goes: a position, or a reader's cursor (transaction, position): the
#: log in its readers' order up to it. Transactions commit in any order, so a position
#: is a prefix only of a log no two of whose transactions were written at once.
UpTo = int | tuple[int, int] | None


def events(
    conn: psycopg.Connection[Any], up_to: UpTo = None, exclude: frozenset[int] = frozenset()
) -> Iterator[dict[str, Any]]:
    query = ("SELECT notification_id, originator_id, topic, convert_from(state, 'UTF8'),"
             " originator_version FROM aura_events")
    params: tuple[Any, ...] = ()
    if isinstance(up_to, tuple):
        query += " WHERE (transaction_id, notification_id) <= (%s, %s)"
        params = up_to
    elif up_to is not None:
        query += " WHERE notification_id <= %s"
        params = (up_to,)
    keys = _keys(conn)
    for position, aggregate_id, topic, state, version in conn.execute(
        query + " ORDER BY transaction_id, notification_id", params
    ):
        if position in exclude:
            continue
        data = json.loads(state)
        if "_sealed" in data:
            data.update(_unsealed(keys, topic, aggregate_id, version, data))
        yield {
            "position": position, "id": aggregate_id, "topic": topic, "data": data,
            "at": datetime.fromisoformat(data["timestamp"]),
        }


def _unsealed(keys: dict[str, bytes | None], topic: str, aggregate_id: Any, version: int,
              data: dict[str, Any]) -> dict[str, Any]:
    """The sealed personal fields of a stored event, opened with the tests' master key
    (the erased placeholder once the subject's key is gone)."""
    seal = data.pop("_sealed")
    key = keys.get(seal["subject"])
    if key is None:
        return sealing.erased(seal, data)
    return sealing.open_seal(seal, key, topic, aggregate_id, version)


#: Unwrapped data keys, by (subject, wrapped key): a fold reads the whole log each time.
_UNWRAPPED: dict[tuple[str, bytes], bytes] = {}


def _keys(conn: psycopg.Connection[Any]) -> dict[str, bytes | None]:
    provider = LocalKeyProvider(parse_key(os.environ[MASTER_KEY], MASTER_KEY))
    keys: dict[str, bytes | None] = {}
    for subject, key_id, wrapped in conn.execute(
            "SELECT subject, master_key_id, wrapped FROM aura_subject_keys"):
        if wrapped is None:
            keys[subject] = None
            continue
        cached = (subject, bytes(wrapped))
        if cached not in _UNWRAPPED:
            _UNWRAPPED[cached] = provider.unwrap(subject, key_id, bytes(wrapped))
        keys[subject] = _UNWRAPPED[cached]
    return keys


def debate_state(
    conn: psycopg.Connection[Any], up_to: UpTo = None, exclude: frozenset[int] = frozenset()
) -> Rows:
    rows: dict[Any, dict[str, Any]] = {}
    for e in events(conn, up_to, exclude):
        d = e["data"]
        if e["topic"] == "aura.debate.started.v1":
            rows[e["id"]] = {
                "tenant_id": d["meta"]["tenant_id"], "topic": d["topic"],
                "participants": d["participants"], "status": "open", "rounds": 0,
                "arguments": 0, "decision": None, "failure_reason": None,
                "started_at": e["at"], "updated_at": e["at"],
            }
            continue
        row = rows.get(e["id"])
        if row is None:
            continue
        if e["topic"] == "aura.debate.argument_added.v1":
            row["arguments"] += 1
            row["rounds"] = max(row["rounds"], d["round"])
        elif e["topic"] == "aura.debate.consensus_reached.v1":
            row["status"], row["decision"] = "consensus", d["decision"]
        elif e["topic"] == "aura.debate.failed.v1":
            row["status"], row["failure_reason"] = "failed", d["reason"]
        else:
            continue
        row["updated_at"] = e["at"]
    return {k: tuple(v.values()) for k, v in rows.items()}


def stored_debate_state(conn: psycopg.Connection[Any], table: str = "debate_state") -> Rows:
    return {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            f'SELECT debate_id, tenant_id, topic, participants, status, rounds, arguments,'
            f' decision, failure_reason, started_at, updated_at FROM "{table}"'
        )
    }


_DECISION = "aura.decision."


def agent_performance(
    conn: psycopg.Connection[Any], bucket_seconds: int = 0, up_to: UpTo = None
) -> Rows:
    rows: dict[Any, dict[str, Any]] = {}
    for e in events(conn, up_to):
        if not e["topic"].startswith(_DECISION):
            continue
        key: Any = e["data"]["agent_id"]
        if bucket_seconds:
            epoch = int(e["at"].timestamp())
            start = datetime.fromtimestamp(epoch - epoch % bucket_seconds, tz=UTC)
            key = (key, start)
        row = rows.setdefault(key, {
            "proposed": 0, "approved": 0, "rejected": 0, "decided": 0,
            "first_proposal_at": None, "last_decision_at": None,
        })
        kind = e["topic"].removeprefix(_DECISION).removesuffix(".v1")
        row[kind] += 1
        if kind in ("approved", "rejected"):
            row["decided"] += 1
        if kind == "proposed" and row["first_proposal_at"] is None:
            row["first_proposal_at"] = e["at"].isoformat()
        row["last_decision_at"] = e["at"].isoformat()
    return {
        k: (*v.values(), v["approved"] / v["decided"] if v["decided"] else None)
        for k, v in rows.items()
    }


def stored_agent_performance(
    conn: psycopg.Connection[Any], table: str = "agent_performance", windows: bool = False
) -> Rows:
    key = "agent_id, window_start" if windows else "agent_id"
    out = {}
    for row in conn.execute(
        f"SELECT {key}, proposed, approved, rejected, decided, first_proposal_at,"
        f' last_decision_at, approval_rate FROM "{table}{"__windows" if windows else ""}"'
    ):
        n = 2 if windows else 1
        out[tuple(row[:n]) if windows else row[0]] = tuple(row[n:])
    return out


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = 0.95 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def llm_spend(conn: psycopg.Connection[Any], up_to: UpTo = None) -> Rows:
    calls: dict[Any, tuple[str, str, str, Any]] = {}
    rows: dict[Any, dict[str, Any]] = {}
    for e in events(conn, up_to):
        d = e["data"]
        if e["topic"] == "aura.llm_call.requested.v1":
            calls[e["id"]] = (d["meta"]["tenant_id"], d["provider"], d["model"],
                              e["at"].astimezone(UTC).date())
        if not e["topic"].startswith("aura.llm_call.") or e["id"] not in calls:
            continue
        row = rows.setdefault(calls[e["id"]], {
            "calls": 0, "failures": 0, "prompt": 0, "completion": 0,
            "cost": Decimal(0), "latencies": [],
        })
        if e["topic"] == "aura.llm_call.requested.v1":
            row["calls"] += 1
            row["prompt"] += d["prompt_tokens"]
        elif e["topic"] == "aura.llm_call.completed.v1":
            row["completion"] += d["completion_tokens"]
            row["cost"] += Decimal(str(d["cost_usd"]))
            row["latencies"].append(float(d.get("latency_ms", 0.0)))
        elif e["topic"] == "aura.llm_call.failed.v1":
            row["failures"] += 1
    return {
        k: (v["calls"], v["failures"], v["prompt"], v["completion"], v["cost"],
            sorted(v["latencies"]), _rounded(sum(v["latencies"]) / len(v["latencies"])
                                     if v["latencies"] else None),
            _rounded(_p95(v["latencies"])))
        for k, v in rows.items()
    }


def stored_llm_spend(conn: psycopg.Connection[Any], table: str = "llm_spend") -> Rows:
    return {
        tuple(row[:4]): (*row[4:10], _rounded(row[10]), _rounded(row[11]))
        for row in conn.execute(
            "SELECT tenant_id, provider, model, day, calls, failures, prompt_tokens,"
            " completion_tokens, cost_usd, latencies, latency_mean_ms, latency_p95_ms"
            f' FROM "{table}"'
        )
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


