"""One party of a PSI task run by SPU's libpsi (`spu.psi.psi_execute`), from the engine contract.

Runs as `<SPU venv>/bin/python -m accord.engines.spu_psi` (the `spu-psi` AppImage): spu 0.9.5 pins
numpy<2 and jax 0.4.34 and costs 300 MB just to import, so it lives in its own environment and the node
never imports it (`accord.runtimes.engines` installs that environment).

Order, and the guarantee each step gives:

1. Everything local first -- config (`config.py`), task parties, input source and key columns (schema
   only), the link plan -- so a mistake fails naming the field, party or column before any traffic.
2. Read the whole input (DataMesh under a node: one read, one grant use; else a local file), check
   duplicates and write libpsi's input file into a private dir under the work dir (`table.py`).
   `TMPDIR` points there too, so libpsi's scratch files and `sort`'s spill files stay private.
   Meanwhile a thread sets up the link (`link.py`: blackbox through the gateway's PTP transport, no
   listening port): it loads SPU's native modules (`native.py`), probes both gateways and waits for
   the peer's engine.  None of that depends on the input or says anything about it.
3. Hello, the first message that depends on the input (its distinct key count), sent only once step 2
   is done: same config digest at both parties, or nobody sends a single PSI message.  A party whose
   step 2 failed still waits for the link (briefly), says so instead, and fails; its peer fails at
   once naming it.
4. `psi_execute` (RR22 by default, ECDH on Curve25519 as the option; `broadcast_result` when both
   parties receive), in a thread so SIGTERM still stops the process.
5. A receiver builds its output from the row indices libpsi returns and streams it to DataMesh as the
   DomainData `<task id>-output` (CSV; DataMesh records the lineage) -- not yet committed.
6. fin: both confirm; only then is the output committed and `result.json` written.  Any failure
   before aborts the stream, so no partial output is ever registered.

Always: the private dir and this process's libpsi trace files (`/tmp/psi_*.trace`) are removed.  In
blackbox mode the link is neither stopped nor destroyed (`link.open_link` keeps the context alive until
the process ends): `stop_link` and the context's destructor only end yacl's long polls, waiting up to a
second for the current one, while every message of ours is already queued at the peer's gateway when
`send` returns and the node drops the session's queues when the task ends.  The process just exits.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from accord.engines.dataio import DataMeshClient
from accord.engines.psi.config import MATCH_COLUMN, check_parties
from accord.engines.psi.datamesh import DataMeshTableWriter, connect
from accord.engines.psi.errors import ConfigError, PsiError
from accord.engines.psi.inputs import check_keys, resolve_input
from accord.engines.psi.io import TableWriter, open_file_writer
from accord.engines.sdk import ProgressReporter, TaskContext
from accord.engines.spu_psi import native
from accord.engines.spu_psi.config import SpuPsiConfig, parse_config
from accord.engines.spu_psi.files import TraceFiles, private_dir, remove_private
from accord.engines.spu_psi.link import (
    Control,
    LinkPlan,
    PendingLink,
    close_link,
    drain_probe,
    peer_failure,
    plan_link,
    run_interruptibly,
    start_link,
)
from accord.engines.spu_psi.table import (
    KEY_COLUMN,
    PreparedInput,
    matched_rows,
    output_table,
    prepare_input,
    read_all,
    use_steady_memory_pool,
)

log = logging.getLogger("accord.engines.spu_psi")

RESULT_FILE = "result.json"
DEFAULT_OUTPUT = "output.csv"
FAIL_NOTICE_TIMEOUT_S = 15.0


def run_task(ctx: TaskContext, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run this party's side of the PSI task; returns what `result.json` holds.  Raises PsiError."""
    env = os.environ if environ is None else environ
    started = time.monotonic()
    use_steady_memory_pool(env)
    config = parse_config(ctx.input_config)
    party = ctx.cluster.self_party.name
    if party != ctx.domain_id:
        raise ConfigError(
            f"TASK_CLUSTER_DEFINE: this party is {party!r} but KUSCIA_DOMAIN_ID is {ctx.domain_id!r}"
        )
    check_parties(config, [p.name for p in ctx.cluster.parties], party)
    plan = plan_link(ctx, env, config.parties, party, config.recv_timeout_s)
    location = env.get("ACCORD_DATAMESH", "")
    datamesh = connect(location, ctx.token) if location else None
    try:
        return _run(ctx, config, plan, datamesh, started)
    finally:
        if datamesh is not None:
            datamesh.close()


def _run(
    ctx: TaskContext,
    config: SpuPsiConfig,
    plan: LinkPlan,
    datamesh: DataMeshClient | None,
    started: float,
) -> dict[str, Any]:
    party, peer = plan.party, plan.peer
    spec = config.inputs[party]
    receives = party in config.receiver_set
    output_path = ctx.work_dir / (spec.output_path or config.output_path or DEFAULT_OUTPUT)
    private = private_dir(ctx.work_dir)
    for stale in [ctx.work_dir / RESULT_FILE, *([output_path] if datamesh is None else [])]:
        stale.unlink(missing_ok=True)  # from an earlier attempt: never mistake it for this run's
    remove_private(ctx.work_dir)
    private.mkdir(mode=0o700, parents=True)
    os.environ["TMPDIR"] = str(private)
    traces = TraceFiles()
    progress = ProgressReporter(ctx, name="spu-psi-progress", logger=log)
    lctx: Any = None
    writer: TableWriter | None = None
    timings: dict[str, float] = {}
    try:
        progress(0.0, f"starting ({config.protocol}, {plan.describe()})")
        pending: PendingLink | None = None
        try:
            reader = resolve_input(spec, party, datamesh)
            check_keys(reader, spec.keys, party)
            pending = start_link(plan)  # in a thread while this one reads: neither needs the other
            table = read_all(reader)
            prepared = prepare_input(
                table, spec.keys, party=party, duplicates=config.duplicates, psi_csv=private / "input.csv"
            )
        except PsiError as exc:
            _tell_peer_we_failed(pending or start_link(plan), exc)
            raise
        timings["read_s"] = time.monotonic() - started
        progress(0.05, f"read {prepared.rows_read} rows, {prepared.unique_keys} distinct keys")

        mark = time.monotonic()
        lctx = pending.result()
        timings["link_setup_s"] = pending.elapsed_s
        control = Control(lctx, plan)
        answer = control.hello(digest=config.digest(), keys=prepared.unique_keys)
        if plan.mode == "blackbox":
            drain_probe(plan, client=pending.http)
        timings["link_s"] = time.monotonic() - mark
        peer_keys = int(answer.get("keys") or 0)
        progress(0.1, f"linked with {peer} ({peer_keys} distinct keys)")

        mark = time.monotonic()
        output_csv = private / "output.csv"
        report: dict[str, int] = {}
        if prepared.unique_keys and peer_keys:
            report = _psi_execute(config, plan, lctx, prepared, output_csv, progress)
        timings["psi_s"] = time.monotonic() - mark

        mark = time.monotonic()
        output: Any = None
        try:
            if receives:
                matched = matched_rows(output_csv)
                fold = config.duplicates == "keep-all" and len(config.receiver_set) == 1
                output = output_table(prepared, matched, join=config.join, fold_repeats=fold)
                writer = _open_writer(ctx, datamesh, output_path, output.schema, peer, config)
                for batch in output.to_batches(max_chunksize=65536):
                    writer.write(batch)
        except PsiError as exc:
            control.fail("fin", exc.kind)
            raise
        control.fin()
        committed = writer.commit() if writer is not None else None
        timings["output_s"] = time.monotonic() - mark
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        summary: dict[str, Any] = {
            "task_id": ctx.task_id,
            "party": party,
            "peer": peer,
            "engine": "spu",
            "protocol": "RR22" if config.protocol == "RR22" else "ECDH-CURVE_25519",
            "link": plan.mode,
            "receiver": receives,
            "join": config.join,
            "duplicates": config.duplicates,
            "rows": prepared.rows_read,
            "rows_null_key": prepared.rows_null_key,
            "rows_dropped_duplicates": prepared.rows_dropped,
            "unique_keys": prepared.unique_keys,
            "peer_unique_keys": peer_keys,
            "intersection_rows": None if output is None else _matched_count(output, config.join),
            "output_rows": None if output is None else output.num_rows,
            "output": committed,
            "libpsi": report,
            "elapsed_s": round(time.monotonic() - started, 3),
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "children_cpu_s": round(children.ru_utime + children.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        }
        ctx.write_result(RESULT_FILE, summary)
        progress(1.0, "done")
        return summary
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if lctx is not None and plan.mode == "direct":
            close_link(lctx)
        progress.close()
        remove_private(ctx.work_dir)
        traces.cleanup()


def _matched_count(output: Any, join: str) -> int:
    if join != "left":
        return int(output.num_rows)
    return int(pc.sum(output.column(MATCH_COLUMN)).as_py() or 0)


def _tell_peer_we_failed(pending: PendingLink, exc: PsiError) -> None:
    """Our input is unusable: wait a little for the link and say so, so the peer fails now rather than
    at its timeout."""
    plan = pending.plan
    try:
        lctx = pending.result(timeout=min(plan.recv_timeout_s, FAIL_NOTICE_TIMEOUT_S))
    except (PsiError, TimeoutError) as link_error:
        log.info("could not tell %s that we failed: %s", plan.peer, link_error)
        return
    try:
        Control(lctx, plan).fail("hello", exc.kind)
    finally:
        if plan.mode == "direct":
            close_link(lctx)


def _open_writer(
    ctx: TaskContext,
    datamesh: DataMeshClient | None,
    output_path: Path,
    schema: Any,
    peer: str,
    config: SpuPsiConfig,
) -> TableWriter:
    if datamesh is not None:
        return DataMeshTableWriter(
            datamesh,
            f"{ctx.task_id}-output",
            schema,
            attributes={
                "producer": "accord.engines.spu_psi",
                "peer": peer,
                "join": config.join,
                "protocol": config.protocol,
            },
        )
    return open_file_writer(str(output_path), schema)


def _psi_execute(
    config: SpuPsiConfig,
    plan: LinkPlan,
    lctx: Any,
    prepared: PreparedInput,
    output_csv: Path,
    progress: ProgressReporter,
) -> dict[str, int]:
    psi = native.load().libpsi
    receivers = sorted(config.receiver_set)
    both = len(receivers) == 2
    protocol = psi.PsiProtocol.PROTOCOL_RR22 if config.protocol == "RR22" else psi.PsiProtocol.PROTOCOL_ECDH
    cfg = psi.PsiExecuteConfig(
        protocol_conf=psi.PsiProtocolConfig(
            protocol=protocol,
            receiver_rank=plan.parties.index(receivers[0]),
            broadcast_result=both,
            ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519),
        ),
        input_params=psi.InputParams(
            type=psi.SourceType.SOURCE_TYPE_FILE_CSV,
            path=str(prepared.psi_csv),
            selected_keys=[KEY_COLUMN],
            keys_unique=prepared.keys_unique,
        ),
        output_params=psi.OutputParams(
            type=psi.SourceType.SOURCE_TYPE_FILE_CSV, path=str(output_csv), disable_alignment=False
        ),
        join_conf=psi.ResultJoinConfig(type=psi.ResultJoinType.JOIN_TYPE_INNER_JOIN, left_side_rank=0),
    )

    def hook(data: Any) -> None:
        try:
            progress(0.1 + 0.8 * float(data.percentage) / 100.0, str(data.description) or "psi")
        except Exception as exc:  # a progress hook must never break libpsi
            log.debug("progress hook: %s", exc)

    params = psi.ProgressParams(hook=hook, interval_ms=2000)
    try:
        report = run_interruptibly(lambda: psi.psi_execute(cfg, lctx, params), "psi-execute")
    except RuntimeError as exc:
        raise peer_failure(exc, plan.peer, "during the PSI") from None
    return {
        "original_count": int(report.original_count),
        "intersection_count": int(report.intersection_count),
    }
