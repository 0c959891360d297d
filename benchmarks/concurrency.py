"""W6: W1 under concurrency, and what a pool wait costs.

W6. A *burst* is ``tasks`` (64) asyncio tasks started together, each doing
``per_task`` W1 lookups on random users, through one implementation whose
pool holds at most 10 connections (the package's default; every baseline's
pool is sized the same), so about 54 tasks are waiting for a connection at
any time. A round runs ``bursts`` bursts of every implementation,
interleaved in an order rotated by burst, so drift in machine load hits all
alike. Per implementation and round: ops/s (ops / summed burst wall time),
the mean burst wall time, and p50/p99 of each lookup's latency as its task
sees it (pool wait included). Users are drawn before the burst, untimed.

Pool waits (:func:`pool_wait_probe`). The same 64-on-10 contention with a
bare asyncpg pool and a one-round-trip ``SELECT 1`` per acquire, three
ways: ``pool.acquire()``; ``asyncio.timeout(t)`` around it (what the
package does); and ``pool.acquire(timeout=t)`` (asyncpg's own, through its
``wait_for``). For each: µs per acquire+query+release, and per acquire the
asyncio Tasks created (counted by a task factory) and the timers scheduled
(``loop.call_at`` calls). Waiting itself is one future parked in the pool
queue's deque; what differs is the work each waiter adds around it. See
results/pool-waits.md.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from benchmarks.measure import summarize

TASKS = 64


async def _burst(
    run: Callable[[str], Awaitable[Any]], users: list[str], rng: random.Random, tasks: int, per_task: int
) -> tuple[int, list[int]]:
    picks = [[rng.choice(users) for _ in range(per_task)] for _ in range(tasks)]
    latencies: list[int] = []
    perf = time.perf_counter_ns

    async def worker(mine: list[str]) -> None:
        for user in mine:
            began = perf()
            await run(user)
            latencies.append(perf() - began)

    began = perf()
    await asyncio.gather(*(worker(mine) for mine in picks))
    return perf() - began, latencies


async def measure_w6(
    impls: dict[str, Any], *, rounds: int, bursts: int, per_task: int, tasks: int = TASKS, seed: int = 11
) -> dict[str, Any]:
    """Per implementation: rounds of {ops_per_s, mean_us, p50_us, p99_us, burst_ms}."""
    rng = random.Random(seed)
    names = list(impls)
    for name in names:  # fills every pool to its maximum and prepares statements on each connection
        await _burst(impls[name].get_one, impls[name].users, rng, tasks, per_task)
    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(rounds):
        gc.collect()
        walls: dict[str, list[int]] = {name: [] for name in names}
        latencies: dict[str, list[int]] = {name: [] for name in names}
        for number in range(bursts):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                wall, lat = await _burst(impls[name].get_one, impls[name].users, rng, tasks, per_task)
                walls[name].append(wall)
                latencies[name].extend(lat)
        for name in names:
            stats = summarize(latencies[name]).as_dict()
            total_s = sum(walls[name]) / 1e9
            stats["ops_per_s"] = round(len(latencies[name]) / total_s, 2)
            stats["burst_ms"] = round(total_s / len(walls[name]) * 1e3, 3)
            per_round[name].append(stats)
    out: dict[str, Any] = {"ops": tasks * per_task, "tasks": tasks, "per_task": per_task, "bursts": bursts,
                           "impls": {}}
    for name in names:
        rounds_ = per_round[name]
        out["impls"][name] = {
            "label": impls[name].label,
            "rounds": rounds_,
            "median": {f: round(statistics.median(r[f] for r in rounds_), 3)
                       for f in ("ops_per_s", "mean_us", "p50_us", "p99_us", "burst_ms")},
        }
    return out


async def _no_reset(connection: asyncpg.Connection) -> None:
    """The package's pool skips RESET ALL too."""


async def pool_wait_probe(
    url: str, *, max_size: int, tasks: int = TASKS, per_task: int = 30, repeats: int = 5, timeout: float = 10.0
) -> dict[str, Any]:
    """µs per acquire + ``SELECT 1`` + release and Tasks created per acquire, 64 tasks on ``max_size``."""
    loop = asyncio.get_running_loop()
    created = timers = 0
    previous_factory = loop.get_task_factory()
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_at(when, callback, *args, **kwargs)

    def counting_factory(loop_: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop_, **kwargs)

    pool = await asyncpg.create_pool(url, min_size=max_size, max_size=max_size, reset=_no_reset)

    async def bare() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def with_asyncio_timeout() -> None:
        async with asyncio.timeout(timeout):
            conn = await pool.acquire()
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await pool.release(conn)

    async def with_acquire_timeout() -> None:
        async with pool.acquire(timeout=timeout) as conn:
            await conn.fetchval("SELECT 1")

    variants = {
        "pool.acquire()": bare,
        "asyncio.timeout + pool.acquire()": with_asyncio_timeout,
        "pool.acquire(timeout=)": with_acquire_timeout,
    }

    async def run(variant: Callable[[], Awaitable[None]], n_tasks: int, each: int) -> tuple[float, float, float]:
        nonlocal created, timers

        async def worker() -> None:
            for _ in range(each):
                await variant()

        workers = [loop.create_task(worker()) for _ in range(n_tasks)]  # before counting starts
        created = timers = 0
        loop.set_task_factory(counting_factory)
        loop.call_at = counting_call_at  # type: ignore[method-assign]  # asyncio.timeout and call_later use it
        began = time.perf_counter()
        try:
            await asyncio.gather(*workers)
        finally:
            loop.set_task_factory(previous_factory)
            del loop.call_at  # type: ignore[method-assign]
        elapsed = time.perf_counter() - began
        ops = n_tasks * each
        return elapsed / ops * 1e6, created / ops, timers / ops

    try:
        out: dict[str, Any] = {"tasks": tasks, "max_size": max_size, "per_task": per_task, "variants": {}}
        for variant in variants.values():  # warm: every connection prepares SELECT 1
            await run(variant, tasks, per_task)
        samples: dict[str, dict[str, list[float]]] = {
            name: {"contended_us": [], "alone_us": [], "tasks_per_acquire": [], "timers_per_acquire": []}
            for name in variants
        }
        for repeat in range(repeats):
            order = list(variants)
            order = order[repeat % len(order):] + order[: repeat % len(order)]
            for name in order:
                us, per_acquire, timers_each = await run(variants[name], tasks, per_task)
                alone_us, _, _ = await run(variants[name], 1, per_task * 8)
                samples[name]["contended_us"].append(us)
                samples[name]["alone_us"].append(alone_us)
                samples[name]["tasks_per_acquire"].append(per_acquire)
                samples[name]["timers_per_acquire"].append(timers_each)
        for name, values in samples.items():
            out["variants"][name] = {k: round(statistics.median(v), 2) for k, v in values.items()}
        return out
    finally:
        await pool.close()
