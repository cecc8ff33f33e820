"""A module a user names (a catalog's event modules or transient exceptions, ``--module``)
imports, or is refused in one line naming it: never Python's own error for a name that
is empty, relative, huge or holds a NUL."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_es.errors import ConfigurationError
from aura_es.imports import import_named
from tests.support.cli import assert_one_line_error, aura
from tests.support.workers import ROOT

# Random names stay clear of real modules (importing one may do anything): a prefix no
# module has, or a leading dot (relative, never imported).
NAMES = st.one_of(
    st.sampled_from(["", ".", "..x", "a..b", "x\x00y", " ", "os:", "m" * 5000, "é"]),
    st.text(max_size=60).map(lambda s: "zz_no_such_module_" + s),
    st.text(max_size=60).map(lambda s: "." + s),
)


@given(name=NAMES)
def test_a_name_that_does_not_import_is_one_line_naming_it(name: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        import_named(name, "event_modules")
    line = str(refused.value)
    assert line.startswith("event_modules: cannot import ")
    assert "\n" not in line and len(line) < 400


def test_schema_check_refuses_an_empty_module_name_in_one_line() -> None:
    for name in ("", ".relative"):
        assert_one_line_error(
            aura("schema", "check", "--dir", str(ROOT / "schemas"), "--module", name),
            "--module: cannot import")
