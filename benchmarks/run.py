"""``make bench`` / ``python -m benchmarks.run``: the credential hot path, measured.

Creates its own database on the project's PostgreSQL (DATABASE_URL if set,
else the embedded cluster), migrates it and provisions its own roles with
the package's commands, loads users with real envelopes, then measures, as
the application role under RLS and in one asyncio task, interleaved:

  W1 get one credential   W2 list credentials   W3 put_credential
  W6 W1 by 64 concurrent tasks on a pool of 10 (interleaved bursts)
  W4 key rotation rows/s  W5 encrypt_plaintext rows/s (vs a raw asyncpg batch)

for (a) this package, (b) naive raw asyncpg, (c) the raw asyncpg floor (one
round trip per read, two per put) and (d) SQLAlchemy 2 + TypeDecorator. Every
pool is sized like the package's (max 10). Then, untimed: round trips per
operation of every implementation, counted through a loopback proxy, and
what a pool wait costs (asyncio.timeout vs acquire(timeout=)). Checks the
scoped lookup's plan and the rotation's peak memory, prints the load
average at start and end and a table with the issue's targets (judged on
the ratio to the floor (c) where one is given), and writes results.json,
results.md and chart.png. The database and roles are dropped at the end
unless --keep.

  make bench                              100k users, 200k credential rows
  make bench ARGS=--quick                 smoke run, well under a minute
  make bench ARGS="--scale 1000000"       W1 at 200k rows, then grow to 2M
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.concurrency import TASKS, measure_w6, pool_wait_probe
from benchmarks.database import ROOT, BenchDatabase, create_bench_database, drop_bench_database
from benchmarks.dataset import (
    CREDENTIAL_TYPES,
    Dataset,
    load_users,
    random_api_key,
    random_secret_key,
)
from benchmarks.implementations import (
    W1_TYPE,
    Implementation,
    NaiveRaw,
    OneRoundTripRaw,
    PackageAPI,
    pool_bounds,
)
from benchmarks.maintenance import (
    Keys,
    measure_job,
    memory_check,
    put_back_to_plaintext,
    put_under_old_key,
    reseal_for_package,
    subset_rows,
)
from benchmarks.measure import Operation, interleaved
from benchmarks.plans import explain_scoped_lookup
from benchmarks.report import evaluate_targets, render_text, write_results
from benchmarks.roundtrips import count_round_trips
from benchmarks.sqlalchemy_baseline import SQLAlchemyTypeDecorator
from orchestrator_db.crypto.data_keys import activate_data_key, create_data_key, set_data_key_state
from orchestrator_db.crypto.keyring import KeyRing, generate_key_entry
from orchestrator_db.crypto.providers import transit_client
from orchestrator_db.devdb import DatabaseUnavailable, mask_password, resolve_server_url
from orchestrator_db.devdb.openbao import OpenBao
from orchestrator_db.settings import reload_settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_RESULTS_DIR = ROOT / ".local" / "bench-quick"

NOTES = [
    "Round trips per operation are counted, not taken from the code: a separate untimed pass "
    "(benchmarks/roundtrips.py) runs every implementation through a loopback TCP proxy that "
    "counts each client send following a server send. What the code intends: (b) reads 5 "
    "(BEGIN, set_config, SELECT, COMMIT, asyncpg's RESET ALL on release), put 6; (c) reads 1 "
    "(scoped SQL function, no-op pool reset), put 2 (the scoped read gives id, account and type, "
    "then BEGIN; set_config; UPDATE; COMMIT in one simple-protocol message); (d) reads 4, put 5.",
    "W6: 64 tasks start together, each doing a few W1 lookups on random users, through a pool of at "
    "most 10 connections (every implementation's pool is sized like the package's); bursts of "
    "the four implementations are interleaved. Ratios compare mean burst wall time per round; "
    "p50/p99 are per lookup as its task sees it, pool wait included.",
    "SQLAlchemy's TypeDecorator only sees the value, so its AAD binds table and column but not "
    "row id or user: envelopes can be swapped between rows of one column undetected. It reads "
    "its own users (every 10th), sealed that way, in the same table.",
    "W3 replaces the existing 'alpaca' credential of a random user (the row id is kept, so the "
    "new envelopes are bound to it). Its floor is (c)'s two-round-trip put.",
    "W4/W5: before each timed run a fixed subset of rows is put under an old key (W4) or back to "
    "plaintext (W5), untimed; the package's job and a raw asyncpg keyset batch (SELECT rows not "
    "under the active key, re-seal, optimistic UPDATE .. FROM unnest per batch) then each run in "
    "a fresh process as the operator role, alternating order by round. Rows/s counts the subset.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, help="users (2 credentials each); default 100000")
    parser.add_argument("--base-scale", type=int,
                        help="when --scale is larger, W1 is first measured at this many users "
                             "(default 100000 = 200k rows)")
    parser.add_argument("--rounds", type=int, help="measurement rounds (default 5)")
    parser.add_argument("--ops", type=int, help="operations per implementation per round (default 2000)")
    parser.add_argument("--warmup", type=int, help="untimed operations per implementation first (default 200)")
    parser.add_argument("--w6-bursts", type=int, help="W6 bursts per implementation per round (default 4)")
    parser.add_argument("--w6-per-task", type=int,
                        help="W1 lookups per task in a W6 burst of 64 tasks (default 8)")
    parser.add_argument("--rt-ops", type=int, default=50,
                        help="operations per workload in the round-trip counting pass (default 50)")
    parser.add_argument("--rotation-rows", type=int, help="rows W4/W5 re-encrypt per run (default 20000)")
    parser.add_argument("--batch-size", type=int, default=1000, help="W4/W5 batch size (default 1000)")
    parser.add_argument("--skip-maintenance", action="store_true", help="skip W4, W5 and the memory check")
    parser.add_argument("--key-provider", choices=("env", "transit"), default="env",
                        help="where the package's keys come from: env (raw keys) or transit (data keys "
                             "wrapped by a local OpenBao dev server, unwrapped when the pool opens)")
    parser.add_argument("--synchronous-commit-off", action="store_true",
                        help="diagnostic: the bench database commits without waiting for the WAL "
                             "flush, so W3 shows client and round-trip costs rather than fsync")
    parser.add_argument("--keep", action="store_true", help="keep the database and roles (keys go to .local/)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2k users, 2 rounds of 200 ops, small W6 bursts; results to "
                             ".local/bench-quick/")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "scale": 2000 if quick else 100_000,
        "rounds": 2 if quick else 5,
        "ops": 200 if quick else 2000,
        "warmup": 20 if quick else 200,
        "rotation_rows": 1000 if quick else 20_000,
        "w6_bursts": 2 if quick else 4,
        "w6_per_task": 4 if quick else 8,
        "out": QUICK_RESULTS_DIR if quick else RESULTS_DIR,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.base_scale is None:
        args.base_scale = min(args.scale, 2000 if quick else 100_000)
    args.argv = " ".join(sys.argv[1:] if argv is None else argv)
    return args


def log(message: str) -> None:
    print(message, flush=True)


def _workload_result(stats: dict[str, list], impls: dict[str, Implementation], ops: int) -> dict[str, Any]:
    out: dict[str, Any] = {"ops": ops, "impls": {}}
    for key, rounds in stats.items():
        out["impls"][key] = {
            "label": impls[key].label,
            "rounds": [r.as_dict() for r in rounds],
            "median": {
                field: round(statistics.median(getattr(r, field) for r in rounds), 2)
                for field in ("ops_per_s", "mean_us", "p50_us", "p99_us")
            },
        }
    return out


def _operations(impls: dict[str, Implementation], workload: str) -> dict[str, Operation]:
    ops: dict[str, Operation] = {}
    for key, impl in impls.items():
        users = impl.users
        if workload == "W1":
            ops[key] = Operation(lambda rng, u=users: (rng.choice(u),), impl.get_one)
        elif workload == "W2":
            ops[key] = Operation(lambda rng, u=users: (rng.choice(u),), impl.list_all)
        else:
            ops[key] = Operation(
                lambda rng, u=users: (rng.choice(u), random_api_key(), random_secret_key()),
                impl.put_one,
            )
    return ops


async def _measure(impls, workload: str, args) -> dict[str, Any]:
    began = time.perf_counter()
    stats = await interleaved(_operations(impls, workload), rounds=args.rounds, ops=args.ops,
                              warmup=args.warmup)
    result = _workload_result(stats, impls, args.ops)
    base = result["impls"]["b"]["median"]["p50_us"]
    log(f"  {workload} done in {time.perf_counter() - began:.0f} s: " + ", ".join(
        f"({k}) {v['median']['p50_us']:.0f} us p50 / {v['median']['p50_us'] / base:.2f}x"
        for k, v in result["impls"].items()))
    return result


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, Python {platform.python_version()}"


async def _transit_keys(db: BenchDatabase) -> tuple[OpenBao, Keys]:
    """Data keys wrapped by a local OpenBao dev server, stored as an operator would.

    The package unwraps them when its pool opens (one Transit call each);
    the raw baselines, the data set and the maintenance jobs get the same
    keys unwrapped here, so every implementation reads the same envelopes.
    """
    server = OpenBao()
    server.start()
    server.setup_transit()
    os.environ.update(server.transit_env())
    reload_settings()
    transit = transit_client()
    connection = await asyncpg.connect(db.operator_url)
    try:
        entries = []
        for key_id in ("bench_main", "bench_old", "bench_newer"):
            await create_data_key(connection, transit, key_id)
            wrapped = await connection.fetchval(
                "SELECT wrapped_key FROM orchestrator_db_data_keys WHERE key_id = $1", key_id
            )
            key = await asyncio.to_thread(transit.unwrap, wrapped)
            entries.append(f"{key_id}:{base64.b64encode(key).decode('ascii')}")
        await activate_data_key(connection, "bench_main")
        # Only the main and old keys are in the package's ring, as with env keys.
        await set_data_key_state(connection, "bench_newer", "disabled")
    finally:
        await connection.close()
    log(f"keys: Transit data keys on OpenBao at {server.addr} (unwrapped when the pool opens)")
    return server, Keys(*entries)


async def bench(args: argparse.Namespace, server_url: str) -> dict[str, Any]:
    log(f"server: {mask_password(server_url)}")
    began = time.perf_counter()
    db = await create_bench_database(server_url)
    log(f"database {db.name} migrated, roles {db.app_role} / {db.operator_role} "
        f"({time.perf_counter() - began:.1f} s)")
    if args.synchronous_commit_off:
        connection = await asyncpg.connect(db.owner_url)
        try:
            await connection.execute(f'ALTER DATABASE "{db.name}" SET synchronous_commit = off')
        finally:
            await connection.close()
    transit = None
    if args.key_provider == "transit":
        transit, keys = await _transit_keys(db)
    else:
        keys = Keys(generate_key_entry("bench_main"), generate_key_entry("bench_old"),
                    generate_key_entry("bench_newer"))
    ring = KeyRing.parse(keys.ring_text)
    # The package reads its settings at first use: point it at the bench DB as the app role.
    os.environ["DATABASE_URL"] = db.app_url
    os.environ["ORCHESTRATOR_DB_KEYS"] = keys.ring_text  # the maintenance jobs' raw ring
    os.environ.pop("ORCHESTRATOR_DB_KEYS_FILE", None)
    if transit is not None:
        os.environ.update(transit.transit_env())  # the package: ORCHESTRATOR_DB_KEY_PROVIDER=transit
    reload_settings()  # anything that read the settings before this point read the old environment

    impls: dict[str, Implementation] = {}
    try:
        return await _bench_in(db, keys, ring, impls, args)
    finally:
        for impl in impls.values():
            await impl.close()
        if transit is not None:
            transit.stop()
        if args.keep:
            _keep_note(db, keys)
        else:
            await drop_bench_database(db)
            log(f"dropped {db.name} and its roles")


def _keep_note(db: BenchDatabase, keys: Keys) -> None:
    path = ROOT / ".local" / "bench" / f"{db.name}.env"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"DATABASE_URL={db.app_url}\nOPERATOR_URL={db.operator_url}\n"
                 f"ORCHESTRATOR_DB_KEYS={keys.memory_ring_text}\n")
    log(f"kept {db.name}; its URLs and keys are in {path}")


async def _bench_in(db: BenchDatabase, keys: Keys, ring: KeyRing, impls: dict, args) -> dict[str, Any]:
    dataset = Dataset()
    results: dict[str, Any] = {"workloads": {}, "scale": {}, "maintenance": {}, "notes": list(NOTES)}
    base_users = min(args.scale, args.base_scale)
    log(f"loading {base_users:,} users ({base_users * len(CREDENTIAL_TYPES):,} credential rows) ...")
    load_seconds = await load_users(db.owner_url, db.operator_url, ring, dataset, base_users, log)
    log(f"  loaded in {load_seconds:.1f} s")

    impls.update({
        "a": PackageAPI(dataset.main_users),
        "b": NaiveRaw(db.app_url, ring, dataset.main_users),
        "c": OneRoundTripRaw(db.app_url, ring, dataset.main_users),
        "d": SQLAlchemyTypeDecorator(db.app_url, ring, dataset.sqlalchemy_users),
    })
    for impl in impls.values():
        await impl.start()

    async def plan() -> dict[str, Any]:
        return await explain_scoped_lookup(db.app_url, dataset.main_users[0], W1_TYPE)

    if args.scale > base_users:
        log(f"W1 at {dataset.credentials:,} rows ...")
        results["scale"]["small"] = {"users": dataset.users, "rows": dataset.credentials,
                                     "W1": await _measure(impls, "W1", args), "plan": await plan()}
        log(f"growing to {args.scale:,} users ...")
        load_seconds += await load_users(db.owner_url, db.operator_url, ring, dataset, args.scale, log)
        log(f"  total load time {load_seconds:.1f} s")

    for workload in ("W1", "W2", "W3"):
        log(f"{workload} at {dataset.credentials:,} rows ...")
        results["workloads"][workload] = await _measure(impls, workload, args)
    log(f"W6: {TASKS} tasks x {args.w6_per_task} lookups per burst, pool max {pool_bounds()[1]}, "
        f"{args.rounds} rounds x {args.w6_bursts} bursts ...")
    began = time.perf_counter()
    w6 = await measure_w6(impls, rounds=args.rounds, bursts=args.w6_bursts, per_task=args.w6_per_task)
    results["workloads"]["W6"] = w6
    floor = w6["impls"]["c"]["median"]["burst_ms"]
    log(f"  W6 done in {time.perf_counter() - began:.0f} s: " + ", ".join(
        f"({k}) {v['median']['ops_per_s']:,.0f} ops/s, burst {v['median']['burst_ms']:.1f} ms / "
        f"{v['median']['burst_ms'] / floor:.2f}x (c)" for k, v in w6["impls"].items()))
    log("pool waits: 64 tasks on a bare asyncpg pool, three ways to bound the wait ...")
    results["pool_waits"] = await pool_wait_probe(db.app_url, max_size=pool_bounds()[1])
    for name, v in results["pool_waits"]["variants"].items():
        log(f"  {name}: {v['contended_us']:.0f} us per acquire+SELECT 1+release contended, "
            f"{v['alone_us']:.0f} alone; per acquire {v['tasks_per_acquire']:.2f} tasks created, "
            f"{v['timers_per_acquire']:.2f} timers")
    log(f"round trips per operation, counted through a loopback proxy ({args.rt_ops} ops each) ...")
    results["round_trips"] = await count_round_trips(
        db.app_url, os.environ["ORCHESTRATOR_DB_KEYS"], dataset.main_users[:5000],
        dataset.sqlalchemy_users[:5000], ops=args.rt_ops)
    for key, counted in results["round_trips"].items():
        log(f"  ({key}) " + (", ".join(f"{w} {counted[w]:g}" for w in ("W1", "W2", "W3"))
                            if isinstance(counted, dict) else str(counted)))
    final = {"users": dataset.users, "rows": dataset.credentials,
             "W1": results["workloads"]["W1"], "plan": await plan()}
    results["scale"]["large" if "small" in results["scale"] else "small"] = final

    if not args.skip_maintenance:
        await _maintenance(db, keys, ring, dataset, results, args)

    connection = await asyncpg.connect(db.owner_url)
    try:
        server_version = await connection.fetchval("SHOW server_version")
        server_settings = {
            name: await connection.fetchval(f"SHOW {name}")
            for name in ("synchronous_commit", "fsync", "shared_buffers")
        }
    finally:
        await connection.close()
    results["meta"] = {
        "finished_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "args": args.argv,
        "machine": _machine(),
        "server_version": server_version,
        "server_settings": server_settings,
        "users": dataset.users,
        "credential_rows": dataset.credentials,
        "rounds": args.rounds,
        "ops": args.ops,
        "warmup": args.warmup,
        "load_seconds": load_seconds,
        "quick": args.quick,
        "key_provider": args.key_provider,
    }
    return results


async def _maintenance(db, keys: Keys, ring: KeyRing, dataset: Dataset, results, args) -> None:
    subset = await subset_rows(db.operator_url, dataset.maintenance_users, args.rotation_rows)
    common = dict(operator_url=db.operator_url, keys=keys, subset=subset, rounds=args.rounds,
                  batch_size=args.batch_size, log=log)
    log(f"W4 key rotation, {len(subset):,} rows under an old key ...")
    results["maintenance"]["W4"] = await measure_job("W4", "package_rotate", put_under_old_key, **common)
    log(f"W5 encrypt_plaintext, {len(subset):,} plaintext rows ...")
    results["maintenance"]["W5"] = await measure_job(
        "W5", "package_encrypt_plaintext", put_back_to_plaintext, **common)
    subset_runs = [r["package"] for r in results["maintenance"]["W4"]["rounds"] if "package" in r]
    if not results["maintenance"]["W4"]["available"]:
        results["memory"] = {"available": False, "reason": results["maintenance"]["W4"].get("reason")}
        return
    await reseal_for_package(db.operator_url, ring, dataset.sqlalchemy_users)
    results["memory"] = await memory_check(
        operator_url=db.operator_url, keys=keys, total_rows=dataset.credentials,
        subset_runs=subset_runs, batch_size=args.batch_size, log=log)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()
    log("load average at start: " + " ".join(f"{x:.2f}" for x in load_start) + f" ({os.cpu_count()} CPUs)")
    try:
        server_url = resolve_server_url(os.environ.get("DATABASE_URL"))
    except DatabaseUnavailable as error:
        print(f"error: no PostgreSQL for the benchmark: {error}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    results = asyncio.run(bench(args, server_url))
    results["meta"]["loadavg_start"] = [round(x, 2) for x in load_start]
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = evaluate_targets(results)
    results["meta"]["total_seconds"] = round(time.perf_counter() - began, 1)
    print()
    print(render_text(results), flush=True)
    write_results(results, args.out)
    log(f"\nwrote {args.out}/results.json, results.md, chart.png "
        f"({results['meta']['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
