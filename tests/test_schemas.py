"""The event schema registry: `aura-es schema check` finds every kind of breaking change
(exit 1) and refuses a broken registry by name (exit 2); writes are checked against the
schema; upcasters carry every committed version to the current one; an event of a
version this code does not know is a clear, systemic error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from aura_es import AuraAggregate, AuraCreated, AuraEvent, Create, EventSourcedApp, Update
from aura_es.catalog.model import ErrorHandling
from aura_es.domain.llm_call import LLMCallCompleted
from aura_es.errors import ConfigurationError, EventVersionUnknown, InvalidPayload
from aura_es.personal import ERASURE_TOPIC, SEALED_KEY
from aura_es.projection.engine.failures import is_transient, transient_types
from aura_es.schemas import check as checking
from aura_es.schemas import compat, registry
from aura_es.schemas.generate import current_schema, event_classes, schema_uri
from aura_es.schemas.modes import Mode
from aura_es.schemas.sampling import from_schema
from aura_es.store.mapper import JsonMapper
from tests.support.cli import assert_one_line_error, aura
from tests.support.workers import CATALOG, ROOT

REGISTRY = ROOT / "schemas"


def event(topic: str, fields: dict[str, Any], version: int = 1,
          **upcasters: Any) -> type:
    """An event class made for one test (its topic is unique to the test)."""
    namespace: dict[str, Any] = {"__annotations__": dict(fields), "TOPIC": topic,
                                 "__module__": __name__, "__qualname__": topic}
    if version > 1:
        namespace["class_version"] = version
    namespace.update({name: staticmethod(f) for name, f in upcasters.items()})
    return type(f"E_{uuid4().hex}", (AuraEvent,), namespace)


def commit(root: Path, cls: type, version: int, schema: dict[str, Any] | None = None) -> None:
    """Puts ``schema`` (default: the class's current one) in the registry as ``version``."""
    schema = dict(schema or current_schema(cls))
    topic = schema["title"]
    schema["$id"] = schema_uri(topic, version)
    path = registry.path_of(root, topic, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(registry.render(schema))


def findings(root: Path, cls: type, mode: str | None = None) -> list[str]:
    topic = cls.TOPIC  # type: ignore[attr-defined]
    modes = {topic: Mode(mode)} if mode else {}
    return [str(f) for f in checking.check(root, {topic: cls}, modes).findings]


def unique_topic() -> str:
    return f"test.widget_{uuid4().hex[:8]}.added.v1"


# -- the committed registry -------------------------------------------------------------


def test_the_committed_registry_matches_the_code_and_every_mode_holds() -> None:
    result = aura("schema", "check", "--dir", str(REGISTRY), "--catalog", str(CATALOG),
                  "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["findings"] == []
    completed = report["checked"]["aura.llm_call.completed.v1"]
    assert completed == {"versions": [1, 2], "mode": "FULL_TRANSITIVE", "writes": 2}
    listed = json.loads(aura("schema", "list", "--dir", str(REGISTRY), "--json").stdout)
    assert {row["topic"] for row in listed["event_types"]} == set(report["checked"])


def test_export_adds_new_versions_and_never_overwrites_a_committed_one(tmp_path: Path) -> None:
    first = aura("schema", "export", "--dir", str(tmp_path), "--json")
    assert first.returncode == 0, first.stderr
    written = json.loads(first.stdout)["written"]
    # Every type the command line loads, at its current version: LLMCallCompleted's v1
    # cannot be generated (the class is at v2), it is only in the committed registry.
    assert len(written) == len(registry.load(REGISTRY))
    assert (tmp_path / "aura.llm_call.completed.v1/v2.json").exists()
    assert not (tmp_path / "aura.llm_call.completed.v1/v1.json").exists()
    again = aura("schema", "export", "--dir", str(tmp_path), "--json")
    assert json.loads(again.stdout)["written"] == []
    edited = tmp_path / "aura.debate.failed.v1/v1.json"
    text = edited.read_text().replace('"reason"', '"why"')
    edited.write_text(text)
    refused = aura("schema", "export", "--dir", str(tmp_path))
    assert refused.returncode == 1
    assert "aura.debate.failed.v1/v1.json" in refused.stderr
    assert edited.read_text() == text


# -- breaking changes: exit 1 ------------------------------------------------------------


def test_adding_a_field_with_an_upcaster_is_fully_compatible(tmp_path: Path) -> None:
    topic = unique_topic()
    v1 = event(topic, {"name": str})
    commit(tmp_path, v1, 1)
    v2 = event(topic, {"name": str, "size": int}, 2,
               upcast_v1_v2=lambda state: state.update(size=0))
    commit(tmp_path, v2, 2)
    assert findings(tmp_path, v2, "FULL_TRANSITIVE") == []


def test_changing_a_fields_type_breaks_forward_even_with_an_upcaster(tmp_path: Path) -> None:
    topic = unique_topic()
    commit(tmp_path, event(topic, {"name": str}), 1)
    v2 = event(topic, {"name": int}, 2,
               upcast_v1_v2=lambda state: state.update(name=len(state["name"])))
    commit(tmp_path, v2, 2)
    found = findings(tmp_path, v2, "FULL")
    assert len(found) == 1 and "breaks FULL against v1 (forward" in found[0]
    # Only this codebase reads it: its upcaster makes every v1 value fit v2.
    assert findings(tmp_path, v2, "BACKWARD_TRANSITIVE") == []


def test_an_upcaster_that_does_not_reach_the_new_shape_breaks_backward(tmp_path: Path) -> None:
    topic = unique_topic()
    commit(tmp_path, event(topic, {"name": str}), 1)
    v2 = event(topic, {"name": str, "size": int}, 2,
               upcast_v1_v2=lambda state: state.update(size="0"))
    commit(tmp_path, v2, 2)
    found = findings(tmp_path, v2, "BACKWARD")
    assert len(found) == 1 and "(backward" in found[0] and '"size": "0"' in found[0], found


def test_removing_a_required_field_breaks_forward(tmp_path: Path) -> None:
    topic = unique_topic()
    commit(tmp_path, event(topic, {"name": str, "colour": str}), 1)
    v2 = event(topic, {"name": str}, 2, upcast_v1_v2=lambda state: state.pop("colour"))
    commit(tmp_path, v2, 2)
    assert any("(forward" in f for f in findings(tmp_path, v2, "FULL_TRANSITIVE"))
    assert findings(tmp_path, v2, "NONE") == []


def test_transitive_modes_check_every_earlier_version(tmp_path: Path) -> None:
    topic = unique_topic()
    commit(tmp_path, event(topic, {"name": str}), 1)
    v2 = event(topic, {"name": int}, 2, upcast_v1_v2=lambda s: s.update(name=len(s["name"])))
    commit(tmp_path, v2, 2)
    v3 = event(topic, {"name": int}, 3, upcast_v1_v2=lambda s: s.update(name=len(s["name"])),
               upcast_v2_v3=lambda s: None)
    commit(tmp_path, v3, 3)
    assert [f.split(" (")[0] for f in findings(tmp_path, v3, "FORWARD")] == [
        f"{topic} v2: breaks FORWARD against v1"]
    assert [f.split(" (")[0] for f in findings(tmp_path, v3, "FORWARD_TRANSITIVE")] == [
        f"{topic} v2: breaks FORWARD_TRANSITIVE against v1",
        f"{topic} v3: breaks FORWARD_TRANSITIVE against v1"]


def test_a_class_changed_without_a_new_version_is_found(tmp_path: Path) -> None:
    topic = unique_topic()
    commit(tmp_path, event(topic, {"name": str}), 1)
    changed = event(topic, {"name": str, "size": int})
    found = findings(tmp_path, changed)
    assert len(found) == 1 and "differs from the committed" in found[0]
    assert "raise class_version to 2" in found[0]


def test_a_new_version_that_is_not_exported_is_found(tmp_path: Path) -> None:
    topic = unique_topic()
    commit(tmp_path, event(topic, {"name": str}), 1)
    v2 = event(topic, {"name": str, "size": int}, 2,
               upcast_v1_v2=lambda state: state.update(size=0))
    found = findings(tmp_path, v2)
    assert len(found) == 1 and "not in the registry" in found[0]


def test_a_registry_file_edited_after_its_commit_is_found(tmp_path: Path) -> None:
    import subprocess

    shutil.copytree(REGISTRY, tmp_path / "schemas")
    root = tmp_path / "schemas"

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "registry")
    file = root / "aura.debate.failed.v1/v1.json"
    file.write_text(file.read_text().replace('"reason"', '"why"'))
    edited = [str(f) for f in checking.check(root, event_classes(), {}).findings]
    assert any("is edited" in f for f in edited)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "edit in place")
    history = [str(f) for f in checking.check(root, event_classes(), {}).findings]
    assert any("was changed after it was committed" in f for f in history)


# -- a broken registry or code: exit 2 ------------------------------------------------------


def test_a_missing_upcaster_is_bad_input(tmp_path: Path) -> None:
    topic = unique_topic()
    commit(tmp_path, event(topic, {"name": str}), 1)
    v2 = event(topic, {"name": str, "size": int}, 2)
    with pytest.raises(ConfigurationError, match="no upcast_v1_v2"):
        checking.check(tmp_path, {topic: v2}, {})


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "v1.json:1: not valid JSON"),
    ('{"type": "objekt"}', "field type: not valid JSON Schema"),
    ('[1, 2]', "a schema must be a JSON object"),
    ('{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",'
     ' "title": "aura.debate.failed.v1", "$id": "urn:x"}', "field $id is 'urn:x'"),
])
def test_a_hand_edited_schema_file_is_named(tmp_path: Path, content: str, needle: str) -> None:
    shutil.copytree(REGISTRY, tmp_path, dirs_exist_ok=True)
    (tmp_path / "aura.debate.failed.v1/v1.json").write_text(content)
    result = aura("schema", "check", "--dir", str(tmp_path))
    assert_one_line_error(result, "aura.debate.failed.v1/v1.json", needle)


def test_a_registry_directory_that_is_not_there_is_bad_input(tmp_path: Path) -> None:
    for command in ("check", "list"):
        result = aura("schema", command, "--dir", str(tmp_path / "schemaz"))
        assert_one_line_error(result, "schemaz: no such directory")


@pytest.mark.parametrize(("edit", "needle"), [
    ({"minLength": 1_000_000_000}, "minLength 1000000000 is beyond"),
    ({"format": "email"}, "format 'email' is not supported"),
    ({"not": {"type": "null"}}, "keyword 'not' is not supported"),
])
def test_a_schema_the_check_cannot_sample_is_named_not_hung_on(
        tmp_path: Path, edit: dict[str, Any], needle: str) -> None:
    shutil.copytree(REGISTRY, tmp_path, dirs_exist_ok=True)
    file = tmp_path / "aura.llm_call.completed.v1/v1.json"
    schema = json.loads(file.read_text())
    schema["properties"]["cost_usd"] = {"type": "string", **edit}
    file.write_text(registry.render(schema))
    result = aura("schema", "check", "--dir", str(tmp_path), timeout=60)
    assert_one_line_error(result, "aura.llm_call.completed.v1/v1.json", needle)


def test_a_gap_in_the_versions_is_bad_input(tmp_path: Path) -> None:
    shutil.copytree(REGISTRY, tmp_path, dirs_exist_ok=True)
    (tmp_path / "aura.llm_call.completed.v1/v1.json").unlink()
    assert_one_line_error(aura("schema", "check", "--dir", str(tmp_path)), "missing v1")


def test_an_unknown_compatibility_mode_in_the_catalog_is_bad_input(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.read_text() + "\nevents:\n  aura.debate.failed.v1:\n"
                       "    compatibility: SIDEWAYS\n")
    result = aura("schema", "check", "--dir", str(REGISTRY), "--catalog", str(catalog))
    assert_one_line_error(result, "events.aura.debate.failed.v1.compatibility", "FULL")


def test_an_event_class_without_a_stable_topic_is_refused() -> None:
    # Not an AuraEvent subclass: a class with this topic would break every later
    # event_classes() call in this process, which is the point of the check.
    bad = type("Bad", (), {"TOPIC": "Widget Added", "__annotations__": {"name": str}})
    with pytest.raises(ConfigurationError, match="is not lower-case dotted words"):
        current_schema(bad)
    result = aura("schema", "check", "--dir", str(REGISTRY), "--module",
                  "tests.support.bad_topic_events")
    assert_one_line_error(result, "tests.support.bad_topic_events.WidgetAdded",
                          "'Widget Added'")


@pytest.mark.parametrize(("which", "problem"), [
    ("removed", "WidgetRemoved has no TOPIC"),
    ("renamed", "WidgetRenamedAgain inherits TOPIC 'test.widget.renamed.v1' from"
                " WidgetRenamed"),
])
def test_an_event_without_a_topic_of_its_own_is_refused_and_nothing_written(
    db_url: str, which: str, problem: str,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.topicless_events", db_url, which],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    refusal, aggregate = result.stdout.splitlines()
    assert refusal.startswith("ConfigurationError: ") and problem in refusal
    app = EventSourcedApp(db_url, pool_size=1)
    try:
        with app.connect() as conn:
            topics = [row[0] for row in conn.execute(
                "SELECT topic FROM aura_events WHERE originator_id = %s"
                " ORDER BY originator_version", (UUID(aggregate.split()[1]),))]
    finally:
        app.close()
    assert topics == ["test.widget.opened.v1"]


def test_schema_check_flags_every_event_class_without_a_topic_of_its_own() -> None:
    result = aura("schema", "check", "--dir", str(REGISTRY), "--module",
                  "tests.support.topicless_events")
    assert_one_line_error(result, "tests.support.topicless_events.WidgetRemoved has no TOPIC",
                          "WidgetRenamedAgain inherits TOPIC")
    assert "WidgetEvent" not in result.stderr  # a base of other classes needs none


# -- the static rules next to cases written by hand ----------------------------------------


def obj(props: dict[str, Any], required: list[str], extra: bool = True) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": extra}


STR, INT, NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
FORWARD_CASES = [
    # (old, new, a reader of old reads everything new writes)
    (obj({"a": STR}, ["a"]), obj({"a": STR, "b": INT}, ["a", "b"]), True),   # add, open old
    (obj({"a": STR}, ["a"], extra=False), obj({"a": STR, "b": INT}, ["a", "b"]), False),
    (obj({"a": STR, "b": INT}, ["a", "b"]), obj({"a": STR}, ["a"]), False),  # drop required
    (obj({"a": STR, "b": INT}, ["a"]), obj({"a": STR}, ["a"]), False),       # open new may send b
    (obj({"a": NUM}, ["a"]), obj({"a": INT}, ["a"]), True),                # narrow a type
    (obj({"a": INT}, ["a"]), obj({"a": NUM}, ["a"]), False),               # widen a type
    (obj({"a": STR}, ["a"]), obj({"a": INT}, ["a"]), False),               # change a type
    (obj({"a": {"anyOf": [STR, {"type": "null"}]}}, ["a"]), obj({"a": STR}, ["a"]), True),
    (obj({"a": STR}, ["a"]), obj({"a": {"anyOf": [STR, {"type": "null"}]}}, ["a"]), False),
    (obj({"a": {"type": "array", "items": NUM}}, ["a"]),
     obj({"a": {"type": "array", "items": INT}}, ["a"]), True),
    (obj({"a": {"type": "array", "items": INT}}, ["a"]),
     obj({"a": {"type": "array", "items": STR}}, ["a"]), False),
]


@pytest.mark.parametrize(("old", "new", "compatible"), FORWARD_CASES)
def test_forward_verdicts_on_cases_written_by_hand(old: dict[str, Any], new: dict[str, Any],
                                                   compatible: bool) -> None:
    assert (compat.forward(old, new) is None) is compatible


_leaf = st.sampled_from([STR, INT, NUM, {"type": "boolean"}, {"type": "string", "format": "uuid"},
                         {"anyOf": [INT, {"type": "null"}]}])
schemas_ = st.recursive(
    _leaf,
    lambda inner: st.builds(lambda items: {"type": "array", "items": items}, inner)
    | st.dictionaries(st.sampled_from("abcde"), inner, max_size=4).flatmap(
        lambda props: st.builds(obj, st.just(props), st.lists(
            st.sampled_from(sorted(props)), unique=True) if props else st.just([]),
            st.booleans())),
    max_leaves=6,
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.nested_given])
@given(schema=schemas_, data=st.data())
def test_sampled_values_are_valid_and_every_schema_is_compatible_with_itself(
        schema: dict[str, Any], data: st.DataObject) -> None:
    value = data.draw(from_schema(schema))
    assert Draft202012Validator(schema).is_valid(value)
    assert compat.forward(schema, schema) is None


# -- upcasters, writes and unknown versions -------------------------------------------------


def _versions() -> list[tuple[str, int]]:
    committed = registry.load(REGISTRY)
    return [(topic, v) for topic, versions in committed.items() for v in versions
            if len(versions) > 1 and v < max(versions)]


@pytest.mark.parametrize(("topic", "version"), _versions())
def test_every_old_version_upcasts_to_a_valid_current_event(topic: str, version: int) -> None:
    cls = event_classes()[topic]
    old = registry.load(REGISTRY)[topic][version].schema
    latest = Draft202012Validator(current_schema(cls))
    mapper = JsonMapper()

    @settings(max_examples=50, deadline=None)
    @given(payload=from_schema(old))
    def loads(payload: dict[str, Any]) -> None:
        state = {**payload, "timestamp": "2026-11-25T00:00:00+00:00", "meta": {}}
        if version > 1:
            state["class_version"] = version
        decoded = mapper.to_domain_event(StoredEvent(uuid4(), 2, topic, orjson.dumps(state)))
        fields = {k: v for k, v in vars(decoded).items()
                  if k not in {"originator_id", "originator_version", "timestamp", "meta"}}
        assert latest.is_valid(orjson.loads(orjson.dumps(fields, default=str)))

    loads()


def test_an_event_of_a_newer_version_is_a_clear_systemic_error() -> None:
    state = {"completion_tokens": 1, "cost_usd": "0.1", "latency_ms": 2.0, "class_version": 3,
             "timestamp": "2026-11-25T00:00:00+00:00", "meta": {}}
    stored = StoredEvent(uuid4(), 2, LLMCallCompleted.TOPIC, orjson.dumps(state))
    with pytest.raises(EventVersionUnknown) as error:
        JsonMapper().to_domain_event(stored)
    assert "aura.llm_call.completed.v1 is schema version 3" in str(error.value)
    assert "versions up to 2" in str(error.value)
    assert is_transient(error.value, transient_types(ErrorHandling.model_validate({})))


class Counted(AuraCreated):
    TOPIC = "test.schemas.counter.created.v1"
    count: int

    def apply(self, counter: Any) -> None:
        counter.count = self.count


class Added(AuraEvent):
    TOPIC = "test.schemas.counter.added.v1"
    amount: int
    labels: list[str]

    def apply(self, counter: Any) -> None:
        counter.amounts.append(self.amount)  # whatever its type: the mapper checks it


class Counter(AuraAggregate):
    TYPE = "test.schemas.counter"

    def __init__(self) -> None:
        self.count = 0
        self.amounts: list[Any] = []


@pytest.mark.parametrize(("amount", "labels", "needle"), [
    ("5", [], "field amount is '5'"),
    (5, ["a", 2], "field labels.1 is 2"),
    (1.5, [], "field amount is 1.5"),
])
def test_a_write_that_does_not_fit_its_schema_is_refused_and_nothing_is_stored(
        db_url: str, amount: Any, labels: Any, needle: str) -> None:
    app = EventSourcedApp(db_url)
    try:
        created = app.execute(Create("create", f"c-{uuid4()}", {},
                                     lambda i: Counter._create(Counted, id=i, count=0)))
        counter_id: UUID = created.aggregate_id
        with pytest.raises(InvalidPayload) as error:
            app.execute(Update("add", f"a-{uuid4()}", counter_id, {"n": 1},
                               lambda c: c.trigger_event(Added, amount=amount, labels=labels)))
        assert needle in str(error.value) and Added.TOPIC in str(error.value)
        # Named by the schema version a reader expects, not the aggregate's version (2).
        assert f"{Added.TOPIC} (schema v1)" in str(error.value)
        assert app.get(counter_id, Counter).version == 1  # nothing of the command stored
    finally:
        app.close()


_any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    | st.sampled_from(["1.5", "-2E+3", "NaN", "1_000", " 1", str(uuid4()), uuid4().hex,
                       f"{{{uuid4()}}}", f"urn:uuid:{uuid4()}", str(uuid4()).upper(),
                       "2026-11-25T00:00:00+00:00"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=5,
)


@pytest.mark.parametrize("topic", sorted(registry.load(REGISTRY)))
def test_the_write_check_says_what_the_registry_schema_says(topic: str) -> None:
    """Writes are checked with pydantic (fast); services check with the JSON Schema.
    Both must refuse and accept the same payloads, valid ones and broken ones alike, but
    for one documented difference: writes refuse 1.0 for an integer."""
    from aura_es.schemas.validate import check_payload

    cls = event_classes()[topic]
    schema = current_schema(cls)
    reference = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    # The seal is the mapper's, added after the check: never in a payload checked on write.
    fields = sorted(set(schema["properties"]) - {SEALED_KEY})

    @settings(max_examples=150, deadline=None)
    @given(valid=from_schema(schema), field=st.sampled_from(fields), value=_any_json,
           mutate=st.booleans())
    def same_verdict(valid: dict[str, Any], field: str, value: Any, mutate: bool) -> None:
        payload = {**valid, field: value} if mutate else valid
        try:
            check_payload(cls, orjson.dumps(payload), "event")
            accepted = True
        except InvalidPayload:
            accepted = False
        expected = reference.is_valid(payload)
        if mutate and expected and not accepted and _integral_float_for_integer(
                schema["properties"][field], value):
            return  # the one place writes are stricter, on purpose (docs/schemas.md)
        assert accepted == expected, payload

    same_verdict()


def _integral_float_for_integer(field_schema: dict[str, Any], value: Any) -> bool:
    """JSON Schema counts 1.0 as an integer; a write of 1.0 to an ``int`` field is
    refused (it would read back as a float)."""
    return (field_schema.get("type") == "integer" and isinstance(value, float)
            and value.is_integer())


def test_a_projection_stops_at_an_unknown_version_without_dead_lettering(
        db_url: str) -> None:
    """Systemic, not poison: the batch is refused as a whole (the engine reports it as
    transient, so the breaker counts it) and nothing is dead-lettered."""
    from aura_es.catalog import load_catalog
    from aura_es.db import connect
    from aura_es.projection.engine.engine import Engine

    spec = load_catalog(CATALOG).get("LLMSpendProjection")
    assert LLMCallCompleted.TOPIC in spec.source_events
    state = {"completion_tokens": 1, "cost_usd": "0.1", "latency_ms": 2.0, "class_version": 3,
             "timestamp": "2026-11-25T00:00:00+00:00", "meta": {"event_id": str(uuid4())}}
    with connect(db_url) as conn:
        conn.execute("INSERT INTO aura_events (originator_id, originator_version, topic,"
                     " state) VALUES (%s, 2, %s, %s)",
                     (uuid4(), LLMCallCompleted.TOPIC, orjson.dumps(state)))
        engine = Engine(conn, spec)
        failures = []
        for _ in range(spec.error_handling.circuit_breaker.failure_threshold):
            failures.append(engine.advance().failure)
        assert all(isinstance(f, EventVersionUnknown) for f in failures)
        assert engine.breaker.state == "open"  # and nothing runs until its probe
        assert engine.advance().step is None
        assert conn.execute("SELECT count(*) FROM aura_dead_letters").fetchone() == (0,)
        cursor = conn.execute("SELECT cursor_transaction FROM aura_projection_checkpoints"
                              " WHERE projection = %s", (spec.name,)).fetchone()
        assert cursor in (None, (0,))


def test_schema_list_and_check_outside_a_project_need_no_catalog(tmp_path: Path) -> None:
    """The default catalog is read where it exists; elsewhere every type has the default
    mode. A catalog named explicitly must exist."""
    shutil.copytree(REGISTRY, tmp_path / "schemas")
    bare = subprocess.run([sys.executable, "-m", "aura_es.cli", "schema", "list", "--json"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bare.returncode == 0, bare.stderr
    # The framework's only event type is the erasure's own.
    assert [t["topic"] for t in json.loads(bare.stdout)["event_types"]] == [ERASURE_TOPIC]
    here = subprocess.run([sys.executable, "-m", "aura_es.cli", "schema", "list", "--json",
                           "--module", "aura_es.domain"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert here.returncode == 0, here.stderr
    rows = json.loads(here.stdout)["event_types"]
    assert {r["mode"] for r in rows} == {"FULL_TRANSITIVE"} and len(rows) >= 10
    checked = subprocess.run([sys.executable, "-m", "aura_es.cli", "schema", "check",
                              "--module", "aura_es.domain"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert checked.returncode == 0, checked.stderr
    named = subprocess.run([sys.executable, "-m", "aura_es.cli", "schema", "list",
                            "--catalog", "missing.yaml"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert_one_line_error(named, "missing.yaml")
