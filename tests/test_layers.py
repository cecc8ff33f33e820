"""Dependencies go one way: store <- projection <- replay / mirror <- ops <- workers <- cli,
with the AURA domain on top of the framework as its first user (docs/architecture.md)."""

from __future__ import annotations

from tests.support.layers import LAYERS, beyond_the_faces, check, project_sources
from tests.support.workers import ROOT


def test_no_import_goes_against_the_layers() -> None:
    assert [str(v) for v in check(project_sources(ROOT))] == []


def test_a_wrong_import_is_caught() -> None:
    """The check can fail: a store module importing a replay module, the framework
    importing the domain, and two siblings importing each other are all reported."""
    sources = {
        "aura_es.store.bad": "from aura_es.replay import generations\n",
        "aura_es.projection.bad": "import aura_es.domain.debate\n",
        "aura_es.mirror.bad": "from aura_es.replay.rebuild import Rebuild\n",
        "aura_es.store.fine": "from aura_es.errors import AuraError\n",
        "aura_es.cli.fine": "from aura_es.worker.worker import Worker\nimport aura_es.domain\n",
    }
    assert sorted((v.module, v.imports) for v in check(sources)) == [
        ("aura_es.mirror.bad", "aura_es.replay.rebuild"),
        ("aura_es.mirror.bad", "aura_es.replay.rebuild.Rebuild"),
        ("aura_es.projection.bad", "aura_es.domain.debate"),
        ("aura_es.store.bad", "aura_es.replay"),
        ("aura_es.store.bad", "aura_es.replay.generations"),
    ]


def test_every_module_of_the_project_belongs_to_a_layer() -> None:
    from tests.support.layers import EXEMPT, owner

    unplaced = [m for m in project_sources(ROOT) if m not in EXEMPT and owner(m) is None]
    assert unplaced == []
    assert len(LAYERS) >= 8


def test_the_docs_examples_use_only_the_public_faces() -> None:
    """What a user copies from docs/examples imports what docs/architecture.md lists as
    public, so internals can move without breaking anyone's copy."""
    sources = {p.stem: p.read_text() for p in (ROOT / "docs" / "examples").glob("*.py")}
    assert len(sources) >= 4
    assert beyond_the_faces(sources) == []
    assert beyond_the_faces({"bad": "from aura_es.store.eventlog import read_all\n"}) == [
        "bad imports aura_es.store.eventlog"]
