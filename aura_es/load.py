"""A deterministic, realistic AURA workload with duplicate (retried) commands.

Everything a run sends follows from its seed: the scenarios, their order, every
idempotency key and which commands are re-sent. Two runs with one seed, even at the
same time, therefore store exactly what one run stores.
"""

from __future__ import annotations

import functools
import itertools
import math
import queue
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


# -- paced load: a steady rate, open loop -----------------------------------------------

PROFILES = ("sustained", "spike", "soak")


def due_at(profile: str, rate: float, duration: float, k: int) -> float:
    """When command ``k`` (0-based) of a run is due, in seconds from its start, for the
    plan's load shapes scaled to ``rate``: sustained holds it; spike ramps it from 1% to
    all of it over the run (the plan's 100 to 10,000 debates); soak holds 80% of it (the
    plan's "80% of capacity", meant to run long). Solved from the count sent so far,
    N(t) = integral of the rate, so a slow start does not stretch the first gap."""
    if profile == "spike":
        # N(t) = rate * (0.01 t + 0.495 t^2 / duration): the root of N(t) = k.
        a, b = 0.495 * rate / duration, 0.01 * rate
        return float((-b + math.sqrt(b * b + 4 * a * k)) / (2 * a))
    if profile == "soak":
        return k / (0.8 * rate)
    return k / rate


@dataclass
class PacedReport:
    profile: str
    rate: float
    duration: float
    #: (scheduled, finished, error type or None) per command, in the order sent.
    samples: list[tuple[float, float, str | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, scheduled: float, finished: float, error: str | None) -> None:
        with self._lock:
            self.samples.append((scheduled, finished, error))

    def as_dict(self) -> dict[str, object]:
        ok = sorted(f - s for s, f, e in self.samples if e is None)
        errors: dict[str, int] = {}
        for _, _, e in self.samples:
            if e is not None:
                errors[e] = errors.get(e, 0) + 1
        sent = len(self.samples)
        return {
            "profile": self.profile, "rate": self.rate, "duration_seconds": self.duration,
            "sent": sent, "succeeded": len(ok), "failed": sent - len(ok), "errors": errors,
            "success_ratio": round(len(ok) / sent, 6) if sent else 0.0,
            "latency_ms": {f"p{q}": round(_quantile(ok, q / 100) * 1000, 2)
                           for q in (50, 95, 99)},
            "longest_unavailability_seconds": round(self.longest_unavailability(), 3),
        }

    def longest_unavailability(self) -> float:
        """The longest time without a command completing successfully, as a client sees
        it: between consecutive successes (and from the start to the first, and from the
        last to the end of the run)."""
        if not self.samples:
            return 0.0
        start = min(s for s, _, _ in self.samples)
        end = max(f for _, f, _ in self.samples)
        done = sorted(f for _, f, e in self.samples if e is None)
        marks = [start, *done, end]
        return max(b - a for a, b in itertools.pairwise(marks))


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def run_paced(
    app: AuraApp, *, seed: int, rate: float, duration: float, profile: str = "sustained",
    lanes: int = 32, on_progress: Callable[[int], None] | None = None,
) -> PacedReport:
    """Sends the workload at ``rate`` commands/s (shaped by ``profile``) for ``duration``
    seconds, open loop: each command is due at its time whether or not the ones before
    it have finished, and its latency counts from then. ``lanes`` threads run scenarios
    one step at a time (a scenario's steps depend on its first); a command that fails is
    recorded and its scenario dropped (a failed create has no id to go on with)."""
    report = PacedReport(profile, rate, duration)
    due: queue.Queue[float | None] = queue.Queue()
    source = scenarios(seed, 10**9)
    source_lock = threading.Lock()

    def lane() -> None:
        scenario: Scenario | None = None
        step, aggregate = 0, None
        while (scheduled := due.get()) is not None:
            if scenario is None or step >= len(scenario.steps):
                with source_lock:
                    scenario = next(source)
                step, aggregate = 0, None
            error: str | None = None
            try:
                result = app.execute(scenario.steps[step](app, aggregate))
                aggregate = aggregate or result.aggregate_id
                step += 1
            except Exception as e:  # an outage past the deadline, a conflict: recorded
                error = type(e).__name__
                scenario = None
            report.record(scheduled, time.monotonic(), error)
            if on_progress is not None:
                on_progress(1)

    threads = [threading.Thread(target=lane, name=f"paced-{i}", daemon=True)
               for i in range(max(1, lanes))]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    for k in itertools.count():
        offset = due_at(profile, rate, duration, k)
        if offset >= duration:
            break
        wait = started + offset - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        due.put(started + offset)
    for _ in threads:
        due.put(None)
    for thread in threads:
        thread.join()
    return report
