"""Interleaved, repeated timing of sequential operations in one asyncio task.

Within a round, operation k runs every implementation once, in an order
rotated by k (A B C D, B C D A, ...), so drift in machine load hits all of
them alike. Each implementation draws its own random user per operation;
the draw happens outside the timed region.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Operation:
    """``pick`` draws the arguments (untimed); ``run`` is what is timed."""

    pick: Callable[[random.Random], tuple]
    run: Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class RoundStats:
    ops_per_s: float
    mean_us: float
    p50_us: float
    p99_us: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in asdict(self).items()}


def summarize(latencies_ns: list[int]) -> RoundStats:
    ordered = sorted(latencies_ns)
    n = len(ordered)
    total_s = sum(ordered) / 1e9
    return RoundStats(
        ops_per_s=n / total_s,
        mean_us=total_s / n * 1e6,
        p50_us=ordered[n // 2] / 1e3,
        p99_us=ordered[min(n - 1, int(n * 0.99))] / 1e3,
    )


async def interleaved(
    operations: dict[str, Operation],
    *,
    rounds: int,
    ops: int,
    warmup: int,
    seed: int = 7,
) -> dict[str, list[RoundStats]]:
    """Per implementation key, one RoundStats per round."""
    rng = random.Random(seed)
    names = list(operations)
    for name in names:  # prepares statements, fills pools, runs one-time checks
        operation = operations[name]
        for _ in range(warmup):
            await operation.run(*operation.pick(rng))
    results: dict[str, list[RoundStats]] = {name: [] for name in names}
    perf = time.perf_counter_ns
    for _ in range(rounds):
        gc.collect()
        latencies: dict[str, list[int]] = {name: [] for name in names}
        for k in range(ops):
            shift = k % len(names)
            for name in names[shift:] + names[:shift]:
                operation = operations[name]
                args = operation.pick(rng)
                began = perf()
                await operation.run(*args)
                latencies[name].append(perf() - began)
        for name in names:
            results[name].append(summarize(latencies[name]))
    return results
