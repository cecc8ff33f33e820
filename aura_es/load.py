"""A deterministic, realistic AURA workload with duplicate (retried) commands.

Everything a run sends follows from its seed: the scenarios, their order, every
idempotency key and which commands are re-sent. Two runs with one seed, even at the
same time, therefore store exactly what one run stores.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from uuid import UUID

from aura_es.app import AuraApp
from aura_es.commands import Command, CommandResult

TENANTS = ("acme", "globex", "initech", "umbrella")
AGENTS = tuple(f"agent-{i:02d}" for i in range(1, 13))
TOPICS = (
    "AI ethics policy", "Model rollout plan", "Incident postmortem", "Pricing change",
    "Data retention", "Vendor selection", "Hiring plan", "Roadmap Q3",
)
MODELS = {
    "openai": (("gpt-4o", Decimal("0.000010")), ("gpt-4o-mini", Decimal("0.0000006"))),
    "anthropic": (("claude-sonnet", Decimal("0.000015")), ("claude-haiku", Decimal("0.000004"))),
    "mistral": (("mistral-large", Decimal("0.000008")),),
}
POSITIONS = ("for", "against", "neutral")

# One step: given the app and the id the scenario's first command created, build a command.
Step = Callable[[AuraApp, UUID | None], Command]


@dataclass
class Scenario:
    steps: list[Step]


@dataclass
class LoadReport:
    seed: int
    commands_sent: int = 0
    events_stored: int = 0
    duplicates_absorbed: int = 0
    duplicates_sent: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, results: list[CommandResult], resent: bool = False) -> None:
        with self._lock:
            self.commands_sent += len(results)
            if resent:
                self.duplicates_sent += len(results)
            for r in results:
                if r.duplicate:
                    self.duplicates_absorbed += 1
                else:
                    self.events_stored += r.to_version - r.from_version + 1

    @property
    def events_per_second(self) -> float:
        return self.events_stored / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "seed": self.seed,
            "commands_sent": self.commands_sent,
            "events_stored": self.events_stored,
            "duplicates_sent": self.duplicates_sent,
            "duplicates_absorbed": self.duplicates_absorbed,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
        }


def _debate(rng: random.Random, key: str) -> Scenario:
    tenant, topic = rng.choice(TENANTS), rng.choice(TOPICS)
    people = rng.sample(AGENTS, rng.randint(2, 4))
    steps: list[Step] = [
        lambda app, _: app.start_debate_command(
            topic, people, idempotency_key=f"{key}:0", tenant_id=tenant
        )
    ]
    for round_no in range(1, rng.randint(1, 3) + 1):
        for agent in people:
            position, k = rng.choice(POSITIONS), f"{key}:{len(steps)}"
            text = f"{agent} argues {position} in round {round_no}"
            steps.append(functools.partial(_argue, agent, position, text, round_no, k))
    end_key = f"{key}:{len(steps)}"
    if rng.random() < 0.7:
        decision = f"adopt: {topic.lower()}"
        steps.append(lambda app, d: app.reach_consensus_command(
            _id(d), decision, idempotency_key=end_key
        ))
    else:
        reason = rng.choice(("timeout", "deadlock", "participants left"))
        steps.append(lambda app, d: app.fail_debate_command(
            _id(d), reason, idempotency_key=end_key
        ))
    return Scenario(steps)


def _decision(rng: random.Random, key: str) -> Scenario:
    agent, tenant = rng.choice(AGENTS), rng.choice(TENANTS)
    title = f"{rng.choice(TOPICS)} #{rng.randint(1, 999)}"
    approver = f"reviewer-{rng.randint(1, 4)}"
    steps: list[Step] = [lambda app, _: app.propose_decision_command(
        agent, title, idempotency_key=f"{key}:0", tenant_id=tenant
    )]
    if rng.random() < 0.65:
        steps.append(lambda app, d: app.approve_decision_command(
            _id(d), approver, idempotency_key=f"{key}:1"
        ))
    else:
        steps.append(lambda app, d: app.reject_decision_command(
            _id(d), approver, "risk too high", idempotency_key=f"{key}:1"
        ))
    return Scenario(steps)


def _llm_call(rng: random.Random, key: str) -> Scenario:
    tenant, provider = rng.choice(TENANTS), rng.choice(sorted(MODELS))
    model, price = rng.choice(MODELS[provider])
    prompt = rng.randint(50, 4000)
    steps: list[Step] = [lambda app, _: app.request_llm_call_command(
        tenant, provider, model, prompt, idempotency_key=f"{key}:0"
    )]
    if rng.random() < 0.9:
        completion = rng.randint(10, 2000)
        cost = (price * (prompt + completion)).quantize(Decimal("0.000001"))
        latency = round(rng.lognormvariate(6.0, 0.5), 2)
        steps.append(lambda app, c: app.complete_llm_call_command(
            _id(c), completion, cost, latency, idempotency_key=f"{key}:1"
        ))
    else:
        error = rng.choice(("rate_limited", "timeout", "context_length_exceeded"))
        steps.append(lambda app, c: app.fail_llm_call_command(
            _id(c), error, idempotency_key=f"{key}:1"
        ))
    return Scenario(steps)


def _argue(
    agent: str, position: str, text: str, round_no: int, key: str, app: AuraApp, debate: UUID | None
) -> Command:
    return app.add_argument_command(_id(debate), agent, position, text, round=round_no,
                                    idempotency_key=key)


def _id(value: UUID | None) -> UUID:
    assert value is not None
    return value


def scenarios(seed: int, commands: int) -> Iterator[Scenario]:
    """Scenarios whose commands add up to ``commands`` (the last one may be cut short)."""
    rng = random.Random(seed)
    left, n = commands, 0
    while left > 0:
        kind = rng.choices((_debate, _decision, _llm_call), weights=(4, 3, 3))[0]
        scenario = kind(rng, f"load:{seed}:{n}")
        scenario.steps = scenario.steps[:left]
        left -= len(scenario.steps)
        n += 1
        yield scenario


def run_load(
    app: AuraApp,
    *,
    seed: int,
    commands: int,
    duplicate_rate: float = 0.0,
    concurrency: int = 4,
    batch_size: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> LoadReport:
    """Sends the workload; each thread runs ``batch_size`` scenarios side by side.

    A share ``duplicate_rate`` of commands is sent again with the same key: half of those
    right after the original, half at the same time as it from another thread.
    """
    report = LoadReport(seed=seed)
    all_scenarios = list(scenarios(seed, commands))
    chunks = [all_scenarios[i : i + batch_size] for i in range(0, len(all_scenarios), batch_size)]
    dup_rng = random.Random(seed ^ 0x5EED)
    plans = [[dup_rng.random() for _ in range(sum(len(s.steps) for s in c))] for c in chunks]
    racer = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="dup")

    def run_chunk(chunk: list[Scenario], dice: list[float]) -> None:
        ids: list[UUID | None] = [None] * len(chunk)
        roll = iter(dice)
        for wave in range(max(len(s.steps) for s in chunk)):
            live = [i for i, s in enumerate(chunk) if wave < len(s.steps)]
            batch = [chunk[i].steps[wave](app, ids[i]) for i in live]
            rolls = [next(roll) for _ in live]
            racing = [
                racer.submit(app.execute, cmd)
                for cmd, r in zip(batch, rolls, strict=True)
                if r < duplicate_rate / 2
            ]
            results = app.execute_many(batch) if len(batch) > 1 else [app.execute(batch[0])]
            report.add(results)
            for i, result in zip(live, results, strict=True):
                ids[i] = ids[i] or result.aggregate_id
            for f in racing:
                report.add([f.result()], resent=True)
            again = [
                cmd for cmd, r in zip(batch, rolls, strict=True)
                if duplicate_rate / 2 <= r < duplicate_rate
            ]
            for cmd in again:
                report.add([app.execute(cmd)], resent=True)
            if on_progress:
                on_progress(len(batch) + len(racing) + len(again))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="load") as pool:
        for f in [pool.submit(run_chunk, c, d) for c, d in zip(chunks, plans, strict=True)]:
            f.result()
    racer.shutdown()
    report.seconds = time.perf_counter() - started
    return report
