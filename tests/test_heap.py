"""A process's start-up heap is frozen once, when its first application is made, and only
what existed before it: the application's own objects stay collectable. A value of
``AURA_ES_SETTLE_HEAP`` that is not yes or no is one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_es import heap
from aura_es.errors import ConfigurationError
from tests.support.cli import assert_one_line_error, aura
from tests.support.workers import ROOT

_YES = ("y", "yes", "t", "true", "on", "1")
_NO = ("n", "no", "f", "false", "off", "0")


def _python(source: str, **env: str) -> dict[str, object]:
    """Runs ``source`` in a new interpreter (its heap not yet settled); what it prints."""
    # The setting as the test gives it, whatever the suite was run with.
    environment = {**os.environ, "PYTHONPATH": str(ROOT), heap.SETTLE_HEAP: "", **env}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True,
                          text=True, env=environment, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


_MAKE_APPS = """
    import gc, json
    from aura_es import EventSourcedApp
    before = gc.get_freeze_count()
    first = EventSourcedApp({url!r}, pool_size=1)
    after_first = gc.get_freeze_count()
    second = EventSourcedApp({url!r}, pool_size=1)
    tracked = {{id(o) for o in gc.get_objects()}}
    print(json.dumps({{"before": before, "after_first": after_first,
                      "after_second": gc.get_freeze_count(),
                      "apps_collectable": id(first) in tracked and id(second) in tracked}}))
    first.close(); second.close()
"""


def test_the_first_application_freezes_the_heap_before_it_and_no_other_does(db_url: str) -> None:
    seen = _python(_MAKE_APPS.format(url=db_url))
    assert seen["before"] == 0
    frozen = seen["after_first"]
    assert isinstance(frozen, int) and frozen > 10_000  # the imports at least
    assert seen["after_second"] == frozen  # once per process
    assert seen["apps_collectable"] is True  # made after the freeze


@pytest.mark.parametrize("value", ["0", "no", "OFF"])
def test_an_application_told_not_to_leaves_the_heap_alone(db_url: str, value: str) -> None:
    seen = _python(_MAKE_APPS.format(url=db_url), AURA_ES_SETTLE_HEAP=value)
    assert seen["after_first"] == seen["after_second"] == 0


def test_a_forked_child_settles_its_own_heap_once() -> None:
    """Once, whatever the parent held at the fork (a lock held then is not the child's)."""
    seen = _python("""
        import gc, json, os, signal
        from aura_es import heap
        parent = [heap.settle_once(), heap.settle_once()]
        read, write = os.pipe()
        heap._lock.acquire()  # as another thread might hold it at the fork
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # a child stuck on the lock ends, and the test fails
            os.close(read)
            made = [object() for _ in range(10)] + [[] for _ in range(1000)]
            frozen = gc.get_freeze_count()
            child = [heap.settle_once(), heap.settle_once()]
            os.write(write, json.dumps([child, gc.get_freeze_count() - frozen]).encode())
            os._exit(0)
        heap._lock.release()
        os.close(write)
        os.waitpid(pid, 0)
        child, more = json.loads(os.read(read, 1000))
        print(json.dumps({"parent": parent, "child": child, "more": more}))
    """)
    assert seen["parent"] == [True, False]
    assert seen["child"] == [True, False]
    more = seen["more"]
    assert isinstance(more, int) and more >= 1000  # what the child made since


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(_YES + _NO + ("", "YES", "No", "maybe", "2", " 1", "1\x00")),
                 st.text(max_size=12), st.just("x" * 10_000)))
def test_any_settle_setting_is_a_yes_a_no_or_one_line_naming_it(value: str) -> None:
    try:
        wanted = heap.settle_setting(value)
    except ConfigurationError as e:
        message = str(e)
        assert message.startswith("AURA_ES_SETTLE_HEAP=") and "\n" not in message
        assert len(message) < 200  # a huge value is not echoed whole
        assert value and value.lower() not in _YES + _NO
        return
    assert wanted == (value == "" or value.lower() in _YES)
    assert value == "" or value.lower() in _YES + _NO


def test_a_command_line_with_a_bad_settle_setting_is_one_line(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "AURA_ES_SETTLE_HEAP": "maybe"}
    assert_one_line_error(aura("load", "--commands", "1", env=env),
                          "AURA_ES_SETTLE_HEAP='maybe'")
