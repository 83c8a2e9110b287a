"""Store benchmark: transactional writes/s (create, then CAS update) on SQLite and PostgreSQL.

    .venv/bin/python bench/store.py [--n 2000] [--writers 1] [--audit] [--skip-postgres]

Each write is one SqlStore call, i.e. one transaction with its change event (and, with --audit, a
chained AuditRecord).  SQLite runs in WAL mode with synchronous=FULL on a temporary file; PostgreSQL is
a throwaway server (accord.store.pgserver) with its durable defaults (fsync on, synchronous_commit on).
Reads are point gets.  Figures depend on the disk's flush latency; compare them on one machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from accord.resources.audit import AuditEntry
from accord.resources.domain import Domain
from accord.resources.meta import ObjectMeta
from accord.store.pgserver import PostgresServer, find_bindir
from accord.store.sql import SqlStore


@dataclass
class Result:
    backend: str
    creates_per_s: float
    updates_per_s: float
    writes_per_s: float
    reads_per_s: float


async def run(backend: str, url: str, n: int, writers: int, audit: bool) -> Result:
    store = SqlStore(url)
    try:
        await store.revision()  # create the schema outside the timed part
        names = [f"obj-{i}" for i in range(n)]
        shards = [names[w::writers] for w in range(writers)]

        def record(action: str, name: str) -> AuditEntry | None:
            return AuditEntry(actor="bench", action=action, target_name=name) if audit else None

        async def create(shard: list[str]) -> list[Domain]:
            made = []
            for name in shard:
                made.append(
                    await store.create(Domain(meta=ObjectMeta(name=name)), audit=record("create", name))
                )
            return made

        async def update(shard: list[Domain]) -> None:
            for obj in shard:
                obj.meta.labels["step"] = "2"
                await store.update(obj, audit=record("update", obj.meta.name))  # CAS on the created version

        async def read(shard: list[str]) -> None:
            for name in shard:
                await store.get("Domain", name)

        start = time.perf_counter()
        created = await asyncio.gather(*(create(s) for s in shards))
        create_s = time.perf_counter() - start
        start = time.perf_counter()
        await asyncio.gather(*(update(s) for s in created))
        update_s = time.perf_counter() - start
        start = time.perf_counter()
        await asyncio.gather(*(read(s) for s in shards))
        read_s = time.perf_counter() - start
        return Result(backend, n / create_s, n / update_s, 2 * n / (create_s + update_s), n / read_s)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=2000, help="objects to create and then update (default 2000)"
    )
    parser.add_argument("--writers", type=int, default=1, help="concurrent writer coroutines (default 1)")
    parser.add_argument("--audit", action="store_true", help="append a chained audit record with every write")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        results.append(asyncio.run(run("sqlite", url, args.n, args.writers, args.audit)))
    if args.skip_postgres:
        pass
    elif find_bindir() is None:
        print("PostgreSQL server binaries not found: PostgreSQL not measured")
    else:
        started = time.perf_counter()
        with PostgresServer.start(fsync=True) as server:
            print(f"PostgreSQL started in {time.perf_counter() - started:.2f}s on port {server.port}")
            url = server.create_database("bench")
            results.append(asyncio.run(run("postgresql", url, args.n, args.writers, args.audit)))

    print(f"\nn={args.n} writers={args.writers} audit={'on' if args.audit else 'off'}")
    print(f"{'backend':<12}{'writes/s':>10}{'creates/s':>11}{'updates/s':>11}{'reads/s':>10}")
    for r in results:
        print(
            f"{r.backend:<12}{r.writes_per_s:>10.0f}{r.creates_per_s:>11.0f}{r.updates_per_s:>11.0f}"
            f"{r.reads_per_s:>10.0f}"
        )
    if len(results) == 2:
        sqlite, pg = results
        print(
            f"{'ratio':<12}{sqlite.writes_per_s / pg.writes_per_s:>9.2f}x"
            f"{sqlite.creates_per_s / pg.creates_per_s:>10.2f}x"
            f"{sqlite.updates_per_s / pg.updates_per_s:>10.2f}x"
            f"{sqlite.reads_per_s / pg.reads_per_s:>9.2f}x   (SQLite / PostgreSQL)"
        )


if __name__ == "__main__":
    main()
