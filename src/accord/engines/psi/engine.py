"""One PSI task at one party: from the engine contract to `output.csv` and `result.json`.

Order matters for the guarantees the engine gives:

1. Parse and validate everything local first -- config, task parties, peer endpoint, port, input source,
   key columns -- so a mistake fails with a message naming the field/party/column *before any network
   traffic* (the peer then sees us abort, or never sees us at all).
2. Start listening right away (the peer may be faster), start the worker processes in the background,
   and read/hash the input meanwhile.
3. Run rounds 0-3 (`protocol.PsiSession`).  A receiver stages its output in a hidden temp file.
4. Round 4 (fin): both sides confirm they are done.  Only then is the output renamed into place and
   `result.json` written.  Any failure anywhere aborts the writer (no output file), tells the peer (best
   effort) and exits non-zero.

Data: with `ACCORD_DATAMESH` in the environment (under a node) the input is the DomainData named by
`data`, read through DataMesh with the task token, and a receiver's output becomes the new DomainData
`<task id>-output` (registered with lineage at commit); local `path`s are refused there.  Without it
(tests, benchmarks, manual runs) inputs are local CSV/Parquet files and the output is `output.csv` in
the work dir (or `output_path`).
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accord.engines.dataio import DataMeshClient
from accord.engines.psi.config import PsiConfig, check_parties, parse_config
from accord.engines.psi.crypto import new_scalar
from accord.engines.psi.datamesh import DataMeshTableWriter, connect
from accord.engines.psi.errors import ConfigError, PsiError
from accord.engines.psi.inputs import check_keys, resolve_input
from accord.engines.psi.io import TableWriter, open_file_writer
from accord.engines.psi.protocol import PsiSession, prepare_input
from accord.engines.psi.transport import LinkTimeouts, PeerChannel
from accord.engines.psi.workers import Masker, default_workers
from accord.engines.sdk import EngineContractError, ProgressReporter, TaskContext

log = logging.getLogger("accord.engines.psi")

PORT_NAME = "psi"
RESULT_FILE = "result.json"
DEFAULT_OUTPUT = "output.csv"


def listen_port(ctx: TaskContext, environ: Mapping[str, str]) -> int:
    try:
        return ctx.port(PORT_NAME)
    except EngineContractError:
        raw = environ.get(f"KUSCIA_PORT_{PORT_NAME.upper()}_NUMBER", "")
        if raw.isdigit():
            return int(raw)
        raise ConfigError(
            f"ALLOCATED_PORTS: no port named {PORT_NAME!r} (and no KUSCIA_PORT_PSI_NUMBER)"
        ) from None


def _resolve_path(work_dir: Path, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else work_dir / candidate


def _worker_count(config: PsiConfig, environ: Mapping[str, str]) -> int:
    if config.workers is not None:
        return config.workers
    raw = environ.get("ACCORD_PSI_WORKERS", "")
    if raw.isdigit():
        return int(raw)
    return default_workers()


def run_task(ctx: TaskContext, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run this party's side of the PSI task; returns what `result.json` holds.  Raises PsiError."""
    env = os.environ if environ is None else environ
    started = time.monotonic()
    config = parse_config(ctx.input_config)
    party = ctx.cluster.self_party.name
    if party != ctx.domain_id:
        raise ConfigError(
            f"TASK_CLUSTER_DEFINE: this party is {party!r} but KUSCIA_DOMAIN_ID is {ctx.domain_id!r}"
        )
    check_parties(config, [p.name for p in ctx.cluster.parties], party)
    peer = next(name for name in config.parties if name != party)
    try:
        endpoint = next(p for p in ctx.cluster.parties if p.name == peer).endpoint(PORT_NAME)
    except EngineContractError as exc:
        raise ConfigError(f"TASK_CLUSTER_DEFINE: {exc}") from None
    port = listen_port(ctx, env)
    location = env.get("ACCORD_DATAMESH", "")
    datamesh = connect(location, ctx.token) if location else None
    try:
        return _run(ctx, env, config, party, peer, endpoint, port, datamesh, started)
    finally:
        if datamesh is not None:
            datamesh.close()


def _run(
    ctx: TaskContext,
    env: Mapping[str, str],
    config: PsiConfig,
    party: str,
    peer: str,
    endpoint: str,
    port: int,
    datamesh: DataMeshClient | None,
    started: float,
) -> dict[str, Any]:
    spec = config.inputs[party]
    reader = resolve_input(spec, party, datamesh)
    check_keys(reader, spec.keys, party)
    receives = party in config.receiver_set
    output_path = _resolve_path(ctx.work_dir, spec.output_path or config.output_path or DEFAULT_OUTPUT)
    stale_files = [ctx.work_dir / RESULT_FILE] + ([output_path] if datamesh is None else [])
    for stale in stale_files:
        stale.unlink(missing_ok=True)  # from an earlier attempt: never mistake it for this run's
    workers = _worker_count(config, env)
    progress = ProgressReporter(ctx, name="psi-progress", logger=log, min_step=0.02, min_interval=2.0)
    progress(0.0, "starting")

    channel = PeerChannel(
        task_id=ctx.task_id,
        party=party,
        peer=peer,
        endpoint=endpoint,
        egress=env.get("ACCORD_EGRESS") or None,
        listen_host=env.get("ACCORD_BIND_HOST", "127.0.0.1"),
        listen_port=port,
        timeouts=LinkTimeouts(config.peer_wait_s, config.peer_timeout_s, config.timeout_s),
    )
    masker = Masker(new_scalar(), workers)
    writer: TableWriter | None = None
    channel_started = False
    try:
        channel.start()
        channel_started = True
        warm = threading.Thread(target=masker.warm_up, name="psi-warm-up", daemon=True)
        warm.start()
        log.info("%s: PSI with %s at %s, port %d, %d workers", party, peer, endpoint, port, workers)
        prepared = prepare_input(
            reader,
            spec.keys,
            party=party,
            task_id=ctx.task_id,
            duplicates=config.duplicates,
            batch_rows=config.batch_rows,
        )
        read_s = time.monotonic() - started
        progress(0.1, f"read {prepared.rows_read} rows, {prepared.unique_keys} distinct keys")
        warm.join()
        channel.connect()
        session = PsiSession(
            config=config,
            party=party,
            peer=peer,
            prepared=prepared,
            channel=channel,
            masker=masker,
            progress=progress,
        )
        result = session.run()
        masker.close()
        if result.output is not None and datamesh is not None:
            writer = DataMeshTableWriter(
                datamesh,
                f"{ctx.task_id}-output",
                result.output.schema,
                attributes={"producer": "accord.engines.psi", "peer": peer, "join": config.join},
            )
        elif result.output is not None:
            writer = open_file_writer(str(output_path), result.output.schema)
        if writer is not None and result.output is not None:
            for batch in result.output.to_batches(max_chunksize=65536):
                writer.write(batch)
        session.finish()
        committed = writer.commit() if writer is not None else None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        summary: dict[str, Any] = {
            "task_id": ctx.task_id,
            "party": party,
            "peer": peer,
            "protocol": "ECDH-X25519",
            "receiver": receives,
            "join": config.join,
            "duplicates": config.duplicates,
            "rows": prepared.rows_read,
            "rows_null_key": prepared.rows_null_key,
            "rows_dropped_duplicates": prepared.rows_dropped,
            "unique_keys": prepared.unique_keys,
            "peer_unique_keys": result.peer_unique_keys,
            "intersection_keys": result.intersection_keys,
            "intersection_rows": result.intersection_rows,
            "output_rows": None if result.output is None else result.output.num_rows,
            "output": committed,
            "workers": workers,
            "elapsed_s": round(time.monotonic() - started, 3),
            "timings": {"read_s": round(read_s, 3), **{k: round(v, 3) for k, v in result.timings.items()}},
            "bytes_sent": channel.sent_bytes,
            "bytes_received": channel.received_bytes,
            "main_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "main_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        }
        ctx.write_result(RESULT_FILE, summary)
        progress(1.0, "done")
        return summary
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if channel_started:
            kind = exc.kind if isinstance(exc, PsiError) else "internal error"
            channel.abort(f"{party} failed ({kind})")
        raise
    finally:
        masker.close()
        channel.close()
        progress.close()
