"""`aura-es schema check`: the registry against the code and against itself.

Two kinds of finding. A *broken* registry or code (a file that is not a schema of the
registry, a missing upcaster, a gap in the versions, an event class without a stable
topic) is bad input: ConfigurationError, exit 2. An *incompatible change* (a committed
version changed in place, a class whose shape matches no committed version, a version
that breaks its type's compatibility mode) is a Finding: exit 1.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aura_es.errors import ConfigurationError
from aura_es.schemas import registry
from aura_es.schemas.generate import current_schema, payload_version
from aura_es.schemas.modes import PUBLISHED_DEFAULT, Mode


@dataclass(frozen=True)
class Finding:
    topic: str
    version: int | None
    problem: str

    def __str__(self) -> str:
        at = f" v{self.version}" if self.version is not None else ""
        return f"{self.topic}{at}: {self.problem}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def upcaster(cls: type, from_version: int, to_version: int
             ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The class's upcasters from ``from_version`` to ``to_version``, as one function."""
    steps = [getattr(cls, f"upcast_v{v}_v{v + 1}") for v in range(from_version, to_version)]

    def upcast(state: dict[str, Any]) -> dict[str, Any]:
        for step in steps:
            step(state)
        return state

    return upcast


def require_upcasters(cls: type, topic: str) -> None:
    for v in range(1, payload_version(cls)):
        if not callable(getattr(cls, f"upcast_v{v}_v{v + 1}", None)):
            raise ConfigurationError(
                f"event {topic} ({cls.__module__}.{cls.__qualname__}) writes version"
                f" {payload_version(cls)} but has no upcast_v{v}_v{v + 1}: events stored"
                f" as v{v} could not be read")


def check(root: Path, classes: Mapping[str, type], modes: Mapping[str, Mode]) -> Report:
    """``modes``: each type's compatibility mode (a type without one: FULL_TRANSITIVE)."""
    committed = registry.load(root)
    report = Report()
    for topic, cls in classes.items():
        require_upcasters(cls, topic)
        versions = committed.get(topic, {})
        _check_versions(topic, versions)
        mode = modes.get(topic, PUBLISHED_DEFAULT)
        report.checked[topic] = {"versions": sorted(versions), "mode": mode.value,
                                 "writes": payload_version(cls)}
        report.findings.extend(_against_code(root, topic, cls, versions))
        report.findings.extend(_compatibility(topic, cls, versions, mode))
    for topic in committed.keys() - classes.keys():
        report.notes.append(f"{topic}: in the registry but no loaded class has this topic"
                            " (retired, or its module not imported: --module)")
    report.findings.extend(_changed_in_place(root))
    return report


def _check_versions(topic: str, versions: Mapping[int, registry.Entry]) -> None:
    expected = list(range(1, len(versions) + 1))
    if sorted(versions) != expected:
        missing = sorted(set(range(1, max(versions, default=0) + 1)) - set(versions))
        raise ConfigurationError(f"schemas/{topic}: versions {sorted(versions)} have a gap"
                                 f" (missing v{missing[0]})")


def _against_code(root: Path, topic: str, cls: type,
                  versions: Mapping[int, registry.Entry]) -> list[Finding]:
    writes = payload_version(cls)
    shape = current_schema(cls)
    if writes not in versions:
        same = [v for v, e in versions.items() if _shape(e.schema) == _shape(shape)]
        hint = (f" (it matches committed v{same[0]}: class_version went up without a new"
                " shape?)" if same else "")
        return [Finding(topic, writes, f"the class writes version {writes}, which is not in"
                        f" the registry{hint}: run `aura-es schema export` to add it")]
    if registry.render(versions[writes].schema) != registry.render(shape):
        return [Finding(topic, writes, f"the class's shape differs from the committed"
                        f" {versions[writes].path}: a committed version never changes;"
                        f" raise class_version to {writes + 1}, add upcast_v{writes}_v"
                        f"{writes + 1} and export")]
    if max(versions) > writes:
        return [Finding(topic, max(versions), f"committed, but the class writes version"
                        f" {writes}")]
    return []


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "$id"}


def _compatibility(topic: str, cls: type, versions: Mapping[int, registry.Entry],
                   mode: Mode) -> list[Finding]:
    findings: list[Finding] = []
    if mode is Mode.NONE:
        return findings
    try:  # the `schemas` extra: a base install can run the application without it
        from aura_es.schemas import compat, sampling
    except ImportError as e:
        raise ConfigurationError(f"aura-es schema check needs the 'schemas' extra"
                                 f" ({e.name} is missing): pip install 'aura-es[schemas]'"
                                 ) from None
    for entry in versions.values():  # a schema the check cannot sample: exit 2
        try:
            sampling.from_schema(entry.schema)
        except ConfigurationError as e:
            raise ConfigurationError(f"{entry.path}: {e}") from None
    for new in range(2, len(versions) + 1):
        olds = range(1, new) if mode.transitive else [new - 1]
        for old in olds:
            a, b = versions[old].schema, versions[new].schema
            broken = []
            if mode.forward:
                broken.append(compat.forward(a, b))
            if mode.backward:
                broken.append(compat.backward(a, b, upcaster(cls, old, new)))
            findings.extend(
                Finding(topic, new, f"breaks {mode.value} against v{old} ({why.direction}:"
                        f" {why})") for why in broken if why is not None)
    return findings


def _changed_in_place(root: Path) -> list[Finding]:
    """Registry files git shows changed after their first commit, or edited now."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    if not root.is_dir() or git("rev-parse", "--is-inside-work-tree") is None:
        return []
    findings = []
    for line in (git("status", "--porcelain", "--", ".") or "").splitlines():
        if line[:2].strip() in {"M", "MM", "D", "R", "AM"} and line.endswith(".json"):
            name = line[3:].split(" -> ")[-1]
            findings.append(Finding(_topic_of(name), None, f"{name} is edited: committed"
                                    " schema files never change"))
    for line in (git("log", "--format=", "--name-only", "--diff-filter=MDR", "--",
                     ".") or "").splitlines():
        if line.endswith(".json"):
            findings.append(Finding(_topic_of(line), None, f"{line} was changed after it"
                                    " was committed (git log): committed schema files"
                                    " never change"))
    return list(dict.fromkeys(findings))


def _topic_of(name: str) -> str:
    parts = Path(name).parts
    return parts[-2] if len(parts) >= 2 else name
