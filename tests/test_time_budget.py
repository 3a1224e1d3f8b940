"""``pipeline.training.handlers.TimeBudget`` on a tiny ignite engine with a fake clock.

Each fetched batch costs 0.5 s and each step 1 s of the fake clock, so an iteration costs 1.5 s; checkpoint
callbacks cost 100 s, which the budget must not count.
"""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine

from pipeline.training import handlers
from pipeline.training.handlers import TimeBudget

LOAD_S, STEP_S, EVAL_S = 0.5, 1.0, 100.0


class FakeClock:
    """A clock that moves only when told to; both ``process_time`` and ``perf_counter`` read it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(handlers.time, "process_time", fake)
    monkeypatch.setattr(handlers.time, "perf_counter", fake)
    return fake


def _batches(clock: FakeClock, n: int = 4):
    """A re-iterable loader of ``n`` batches (so epochs restart), each costing ``LOAD_S`` to fetch."""

    class Loader:
        def __iter__(self):
            for i in range(n):
                clock.advance(LOAD_S)
                yield i

        def __len__(self) -> int:
            return n

    return Loader()


def _engine(clock: FakeClock, optimizer: torch.optim.Optimizer | None = None) -> tuple[Engine, list[float]]:
    """An engine whose step costs ``STEP_S`` and records the learning rate it ran with."""
    lrs: list[float] = []

    def step(engine: Engine, batch: int) -> None:
        if optimizer is not None:
            lrs.append(optimizer.param_groups[0]["lr"])
        clock.advance(STEP_S)

    engine = Engine(step)
    if optimizer is not None:
        engine.optimizer = optimizer
    return engine, lrs


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_checkpoints_fire_in_order_and_the_run_stops_at_the_budget(clock):
    engine, _ = _engine(clock)
    seen: list[tuple[float, int]] = []
    budget = TimeBudget(
        10.0, checkpoints_s=[6.0, 3.0, 10.0], on_checkpoint=lambda e, t: seen.append((t, e.state.iteration))
    )
    budget.attach(engine)
    engine.run(_batches(clock), max_epochs=1000)
    # 1.5 s per iteration: 3 s passed at iteration 2, 6 s at 4, 10 s at 7 (10.5 s); then terminated
    assert seen == [(3.0, 2), (6.0, 4), (10.0, 7)]
    assert engine.state.iteration == 7 and engine.state.epoch == 2  # across an epoch restart
    assert budget.elapsed_s == pytest.approx(7 * (LOAD_S + STEP_S))


def test_checkpoint_time_is_not_counted(clock):
    engine, _ = _engine(clock)
    steps_at: list[int] = []

    def evaluate(e: Engine, t: float) -> None:
        steps_at.append(e.state.iteration)
        clock.advance(EVAL_S)

    budget = TimeBudget(6.0, clock="wall", checkpoints_s=[1.0, 3.0], on_checkpoint=evaluate)
    budget.attach(engine)
    engine.run(_batches(clock), max_epochs=1000)
    assert steps_at == [1, 2]
    assert engine.state.iteration == 4  # 4 x 1.5 s = 6 s; the 200 s of evaluations did not end the run
    assert budget.elapsed_s == pytest.approx(6.0) and budget.wall_s == pytest.approx(6.0)
    assert clock.now == pytest.approx(6.0 + 2 * EVAL_S)


def test_cosine_learning_rate_follows_the_elapsed_fraction(clock):
    optimizer = _optimizer(lr=2.0)
    engine, lrs = _engine(clock, optimizer)
    TimeBudget(9.0, lr_schedule="cosine").attach(engine)  # the engine's optimizer, peak = its lr
    engine.run(_batches(clock), max_epochs=1000)
    assert len(lrs) == 6
    expected = [2.0 * 0.5 * (1 + math.cos(math.pi * 1.5 * i / 9.0)) for i in range(6)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == 2.0 and lrs[3] == pytest.approx(1.0)


def test_cosine_with_a_given_peak_and_optimizer_and_constant_leaves_the_lr(clock):
    optimizer = _optimizer(lr=5.0)
    engine, lrs = _engine(clock, optimizer)
    del engine.optimizer
    TimeBudget(3.0, lr_schedule="cosine", optimizer=optimizer, base_lr=1.0).attach(engine)
    engine.run(_batches(clock), max_epochs=1000)
    assert lrs == pytest.approx([1.0, 0.5])

    constant = _optimizer(lr=5.0)
    engine, lrs = _engine(clock, constant)
    TimeBudget(3.0).attach(engine)
    engine.run(_batches(clock), max_epochs=1000)
    assert lrs == [5.0, 5.0]


def test_cpu_clock_reads_process_time(monkeypatch):
    cpu, wall = FakeClock(), FakeClock()
    monkeypatch.setattr(handlers.time, "process_time", cpu)
    monkeypatch.setattr(handlers.time, "perf_counter", wall)

    def step(engine: Engine, batch: int) -> None:
        cpu.advance(2.0)  # two threads busy for one wall second
        wall.advance(1.0)

    engine = Engine(step)
    budget = TimeBudget(4.0, clock="cpu")
    budget.attach(engine)
    engine.run(range(10), max_epochs=1)
    assert engine.state.iteration == 2
    assert budget.elapsed_s == 4.0 and budget.wall_s == 2.0


def test_a_second_run_starts_a_fresh_budget(clock):
    engine, _ = _engine(clock)
    seen: list[float] = []
    budget = TimeBudget(3.0, checkpoints_s=[1.5], on_checkpoint=lambda e, t: seen.append(t))
    budget.attach(engine)
    engine.run(_batches(clock), max_epochs=1000)
    engine.run(_batches(clock), max_epochs=1000)  # ignite restarts a terminated run from scratch
    assert seen == [1.5, 1.5] and budget.elapsed_s == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget_s": 0}, "budget_s"),
        ({"budget_s": 1, "clock": "gpu"}, "clock"),
        ({"budget_s": 1, "lr_schedule": "linear"}, "lr_schedule"),
        ({"budget_s": 1, "checkpoints_s": [-1]}, "checkpoints_s"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TimeBudget(**kwargs)


def test_cosine_without_an_optimizer_says_so(clock):
    engine, _ = _engine(clock)
    TimeBudget(3.0, lr_schedule="cosine").attach(engine)
    with pytest.raises(ValueError, match="needs an optimizer"):
        engine.run(_batches(clock), max_epochs=1)
