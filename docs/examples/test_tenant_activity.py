"""A user's own tests, written with the aura-es kit (`pip install 'aura-es[testing]'`):

    pytest docs/examples/test_tenant_activity.py --aura-catalog docs/examples/catalog.yaml

The plugin gives each test a fresh database on a real PostgreSQL (embedded, or the one
AURA_ES_DATABASE_URL names); the specs run commands and projections against it.
"""

from __future__ import annotations

import pytest

from aura_es import AuraApp, DomainError
from aura_es.catalog import Catalog
from aura_es.testing import CatchUp, event, scenario


@pytest.fixture
def aura_app_class() -> type[AuraApp]:
    return AuraApp  # the application under test: here the AURA commands


def test_a_debate_reaches_consensus(aura_app: AuraApp) -> None:
    (scenario(aura_app)
     .given(aura_app.start_debate_command("AI ethics", ["a", "b"], idempotency_key="d1"))
     .when(lambda given: aura_app.reach_consensus_command(
         given.last, "adopt", idempotency_key="c1"))
     .then(event("aura.debate.consensus_reached.v1", decision="adopt")))


def test_a_concluded_debate_takes_no_more_arguments(aura_app: AuraApp) -> None:
    (scenario(aura_app)
     .given(aura_app.start_debate_command("AI ethics", ["a"], idempotency_key="d1"),
            lambda given: aura_app.fail_debate_command(given.last, "no quorum",
                                                        idempotency_key="f1"))
     .when(lambda given: aura_app.add_argument_command(
         given.ids[0], "a", "for", "late", round=1, idempotency_key="late"))
     .then_error(DomainError, match="it is failed"))


def test_a_retried_start_is_stored_once(aura_app: AuraApp) -> None:
    (scenario(aura_app)
     .when(aura_app.start_debate_command("AI ethics", ["a"], idempotency_key="once"))
     .then_once())


def test_tenant_activity_counts_debates_and_calls(
    aura_app: AuraApp, aura_catalog: Catalog,
) -> None:
    (scenario(aura_app)
     .given(aura_app.start_debate_command("t", ["a"], idempotency_key="d1", tenant_id="acme"),
            aura_app.request_llm_call_command("acme", "openai", "gpt-4o", 10,
                                              idempotency_key="c1"),
            aura_app.request_llm_call_command("globex", "openai", "gpt-4o", 10,
                                              idempotency_key="c2"))
     .then_rows("TenantActivityProjection", [
         {"tenant_id": "acme", "debates_started": 1, "llm_calls": 1},
         {"tenant_id": "globex", "debates_started": 0, "llm_calls": 1},
     ], catalog=aura_catalog))


def test_the_catalog_catches_up_in_process(aura_app: AuraApp, aura_caught_up: CatchUp) -> None:
    aura_app.start_debate("t", ["a"], idempotency_key="d1", tenant_id="acme")
    done = aura_caught_up()
    assert done.applied == {"TenantActivityProjection": 1}
