"""DataMesh end to end: a real Arrow Flight server on 127.0.0.1 and real clients (`accord.engines.dataio`).

The server bridges its store calls to the test's event loop, exactly as in the node; so every blocking
client call here runs in a worker thread (`asyncio.to_thread`), never on the loop itself.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from accord.datamesh.flight import DataMeshService, TaskGrant
from accord.datamesh.registry import ensure_default_source, register_file
from accord.engines import dataio
from accord.engines.dataio import (
    DataAccessDenied,
    DataAlreadyExists,
    DataMeshClient,
    DataMeshError,
    DataMeshUnauthenticated,
    DataMeshUnreachable,
    InvalidData,
)
from accord.errors import ErrorCode
from accord.resources.audit import AuditRecord
from accord.resources.data import DomainData, DomainDataGrant, DomainDataGrantSpec, GrantLimit
from accord.resources.meta import ObjectMeta
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore

T = TypeVar("T")
CSV = "id,age,salary\n001,31,100.5\n002,40,200\n003,,300\n"
WAIT_STEPS = 500  # bounded polls of 0.02 s for work the server does after a client has gone


@dataclass
class Mesh:
    store: MemoryStore
    settings: NodeSettings
    service: DataMeshService
    tokens: dict[str, TaskGrant] = field(default_factory=dict)

    def client(self, token: str) -> DataMeshClient:
        return DataMeshClient(self.service.location, token)

    def give(self, token: str, **grant: Any) -> None:
        grant.setdefault("task", "t1")
        grant.setdefault("job", "j1")
        grant.setdefault("domain", "alice")
        self.tokens[token] = TaskGrant(**grant)


async def off_loop(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    store = MemoryStore()
    settings = NodeSettings(domain="alice", dir=tmp_path / "node", datamesh_port=0)
    await ensure_default_source(store, settings)
    for name in ("alice-table", "other-table"):
        path = tmp_path / f"{name}.csv"
        path.write_text(CSV)
        await register_file(store, settings, name, path, column_types={"id": "str"})
    tokens: dict[str, TaskGrant] = {}

    async def resolve(token: str) -> TaskGrant | None:
        return tokens.get(token)

    service = DataMeshService(store, settings, resolve)
    runner = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), 10)
    try:
        yield Mesh(store, settings, service, tokens)
    finally:
        service.request_stop()
        await asyncio.wait_for(runner, 20)


async def _audit(store: MemoryStore, action: str) -> list[AuditRecord]:
    return [
        r for r in await store.list("AuditRecord") if isinstance(r, AuditRecord) and r.spec.action == action
    ]


async def _eventually(check: Callable[[], bool], what: str) -> None:
    for _ in range(WAIT_STEPS):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def _data_files(settings: NodeSettings) -> list[str]:
    return sorted(p.name for p in settings.data_dir.iterdir())


async def test_a_task_reads_only_its_inputs(mesh: Mesh) -> None:
    mesh.give("tok", inputs={"alice-table"})
    client = mesh.client("tok")
    table = await off_loop(lambda: client.read_all("alice-table", ["salary", "id"]))
    assert table.schema.names == ["salary", "id"]
    assert table.column("id").to_pylist() == ["001", "002", "003"]  # registered as str: zeros kept
    schema = await off_loop(lambda: client.schema("alice-table", ["age"]))
    assert schema.names == ["age"] and schema.field("age").type == pa.int64()
    with pytest.raises(DataAccessDenied, match="was not given DomainData 'other-table'") as err:
        await off_loop(lambda: client.read_all("other-table"))
    assert err.value.code == ErrorCode.GRANT_DENIED
    with pytest.raises(InvalidData, match="has no column 'nope'"):
        await off_loop(lambda: client.read_all("alice-table", ["nope"]))
    [read] = await _audit(mesh.store, "data.read")  # schema() and refusals spend nothing
    assert read.spec.actor == "task/t1" and read.spec.details["columns"] == ["salary", "id"]
    raw = fl.FlightClient(mesh.service.location)
    options = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer tok")])
    listed = await off_loop(lambda: list(raw.list_flights(options=options)))
    assert [json.loads(i.descriptor.command)["domaindata_id"] for i in listed] == ["alice-table"]
    raw.close()
    client.close()


async def test_bad_or_missing_token_is_refused(mesh: Mesh) -> None:
    with pytest.raises(DataMeshUnauthenticated, match="not valid") as err:
        await off_loop(lambda: mesh.client("wrong").read_all("alice-table"))
    assert err.value.code == ErrorCode.UNAUTHENTICATED
    raw = fl.FlightClient(mesh.service.location)
    ticket = fl.Ticket(json.dumps({"domaindata_id": "alice-table"}).encode())
    with pytest.raises(fl.FlightUnauthenticatedError, match="missing task token"):
        await off_loop(lambda: raw.do_get(ticket).read_all())
    raw.close()
    assert await _audit(mesh.store, "data.read") == []


async def test_a_write_registers_a_domaindata_with_lineage(mesh: Mesh) -> None:
    mesh.give("writer", task="job-1-psi", job="job-1", inputs={"alice-table"}, outputs_allowed=True)
    table = pa.table({"id": ["001", "003"], "hit": [True, False]})
    name = await off_loop(
        lambda: mesh.client("writer").write("job-1-psi-output", table, comments={"id": "join key"})
    )
    assert name == "job-1-psi-output"
    data = await mesh.store.get("DomainData", name)
    assert isinstance(data, DomainData)
    assert data.spec.lineage.model_dump() == {"inputs": ["alice-table"], "task": "job-1-psi", "job": "job-1"}
    assert [(c.name, c.type, c.comment) for c in data.spec.columns] == [
        ("id", "str", "join key"),
        ("hit", "bool", ""),
    ]
    assert data.spec.attributes["rows"] == "2" and data.spec.file_format == "CSV"
    assert [r.spec.actor for r in await _audit(mesh.store, "data.write")] == ["task/job-1-psi"]
    mesh.give("reader", task="next", inputs={name})
    back = await off_loop(lambda: mesh.client("reader").read_all(name))
    assert back.column("id").to_pylist() == ["001", "003"] and back.column("hit").to_pylist() == [True, False]
    with pytest.raises(DataAlreadyExists):
        await off_loop(lambda: mesh.client("writer").write(name, table))
    with pytest.raises(DataAccessDenied, match="may not write"):
        await off_loop(lambda: mesh.client("reader").write("another", table))
    mesh.give("named", inputs=set(), outputs_allowed=True, outputs={"only-this"})
    with pytest.raises(DataAccessDenied, match="may write only only-this, not 'another'"):
        await off_loop(lambda: mesh.client("named").write("another", table))
    empty = await off_loop(
        lambda: mesh.client("writer").write("empty-out", [], schema=table.schema, file_format="parquet")
    )
    got = await off_loop(lambda: (mesh.give("r2", inputs={empty}), mesh.client("r2").read_all(empty))[1])
    assert got.num_rows == 0 and got.schema.names == ["id", "hit"]


async def test_a_failing_producer_registers_nothing(mesh: Mesh) -> None:
    mesh.give("writer", inputs=set(), outputs_allowed=True)
    before = _data_files(mesh.settings)

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch({"x": [1, 2]})
        raise RuntimeError("engine bug")

    with pytest.raises(RuntimeError, match="engine bug"):
        await off_loop(lambda: mesh.client("writer").write("broken-out", batches()))
    await _eventually(lambda: mesh.service.counts["writes_aborted"] == 1, "the server saw the abort")
    with pytest.raises(Exception, match="not found"):
        await mesh.store.get("DomainData", "broken-out")
    assert _data_files(mesh.settings) == before


async def test_a_killed_writer_registers_nothing(mesh: Mesh) -> None:
    mesh.give("writer", inputs=set(), outputs_allowed=True)
    before = _data_files(mesh.settings)
    script = textwrap.dedent(
        f"""
        import sys
        import pyarrow as pa
        from accord.engines.dataio import DataMeshClient
        client = DataMeshClient({mesh.service.location!r}, "writer")
        def batches():
            for i in range(1000):
                yield pa.record_batch({{"x": list(range(i * 100, i * 100 + 100))}})
            sys.stdin.read()  # block here, mid-stream, until killed
        client.write("killed-out", batches())
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        await _eventually(
            lambda: any(".tmp-" in n for n in _data_files(mesh.settings)), "the server started the write"
        )
        child.kill()
        await asyncio.to_thread(child.wait, 20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(20)
        assert child.stdin is not None
        child.stdin.close()
    await _eventually(lambda: mesh.service.counts["writes_aborted"] == 1, "the server saw the abort")
    assert _data_files(mesh.settings) == before
    assert [d.meta.name for d in await mesh.store.list("DomainData")] == ["alice-table", "other-table"]


async def test_grants_are_enforced_over_flight(mesh: Mesh) -> None:
    await mesh.store.create(
        DomainDataGrant(
            meta=ObjectMeta(name="to-bob", domain="alice"),
            spec=DomainDataGrantSpec(
                author="alice",
                domaindata_id="alice-table",
                grant_domain="bob",
                columns=["id"],
                limit=GrantLimit(use_count=1),
            ),
        )
    )
    mesh.give("bob-task", task="bob-t", domain="bob", inputs={"alice-table"})
    client = mesh.client("bob-task")
    with pytest.raises(DataAccessDenied, match=r"columns \['age'\] are outside the grant"):
        await off_loop(lambda: client.read_all("alice-table", ["id", "age"]))
    table = await off_loop(lambda: client.read_all("alice-table", ["id"]))
    assert table.num_rows == 3
    with pytest.raises(DataAccessDenied, match="exhausted: 1 of 1") as err:
        await off_loop(lambda: client.read_all("alice-table", ["id"]))
    assert err.value.code == ErrorCode.GRANT_DENIED
    [read] = await _audit(mesh.store, "data.read")
    assert read.spec.details["grant"] == "to-bob" and read.spec.details["domain"] == "bob"


async def test_module_functions_use_the_task_environment(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    mesh.give("env-tok", inputs={"alice-table"}, outputs_allowed=True)
    monkeypatch.setenv(dataio.ENV_DATAMESH, mesh.service.location)
    monkeypatch.setenv(dataio.ENV_TOKEN, "env-tok")
    batches = await off_loop(lambda: list(dataio.read_table("alice-table", columns=["age"])))
    assert sum(b.num_rows for b in batches) == 3
    name = await off_loop(lambda: dataio.write_table("env-out", pa.table({"a": [1]})))
    assert name == "env-out"
    monkeypatch.delenv(dataio.ENV_DATAMESH)
    with pytest.raises(DataMeshError, match="ACCORD_DATAMESH is not set"):
        dataio.read_all("alice-table")


async def test_unreachable_and_port_in_use(mesh: Mesh) -> None:
    port = mesh.service.port
    await mesh.service.shutdown()
    with pytest.raises(DataMeshUnreachable, match="cannot reach DataMesh"):
        await off_loop(lambda: DataMeshClient(f"grpc+tcp://127.0.0.1:{port}", "t").read_all("alice-table"))
    settings = mesh.settings.model_copy(update={"datamesh_port": 0})
    first = DataMeshService(mesh.store, settings, lambda token: asyncio.sleep(0, None))
    taken = await first.start()
    second = DataMeshService(mesh.store, settings, lambda token: asyncio.sleep(0, None), port=taken)
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken}"):
        await second.start()
    await first.shutdown()


async def test_kuscia_style_get_flight_info_then_ticket(mesh: Mesh) -> None:
    mesh.give("tok", inputs={"alice-table"}, outputs_allowed=True)
    raw = fl.FlightClient(mesh.service.location)
    options = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer tok")])
    query = {"type": "CommandDomainDataQuery", "domaindata_id": "alice-table", "columns": ["age"]}

    def read() -> pa.Table:
        info = raw.get_flight_info(fl.FlightDescriptor.for_command(json.dumps(query).encode()), options)
        assert info.schema.names == ["age"] and info.endpoints[0].locations == []
        return raw.do_get(info.endpoints[0].ticket, options).read_all()

    assert (await off_loop(read)).column("age").to_pylist() == [31, 40, None]

    update = {"type": "CommandDomainDataUpdate", "domaindata_id": "k-out", "file_format": "parquet"}

    def write() -> dict[str, Any]:
        info = raw.get_flight_info(fl.FlightDescriptor.for_command(json.dumps(update).encode()), options)
        ticket = info.endpoints[0].ticket.ticket
        table = pa.table({"v": [1, 2, 3]})
        writer, answers = raw.do_put(fl.FlightDescriptor.for_command(ticket), table.schema, options)
        writer.write_table(table)
        writer.write_metadata(pa.py_buffer(b'{"commit": true, "rows": 3}'))
        writer.done_writing()
        answer = json.loads(answers.read().to_pybytes())
        writer.close()
        return dict(answer)

    answer = await off_loop(write)
    assert answer == {"domaindata_id": "k-out", "rows": 3, "relative_uri": "k-out.parquet"}
    stored = await mesh.store.get("DomainData", "k-out")
    assert isinstance(stored, DomainData) and stored.spec.file_format == "PARQUET"
    raw.close()


async def test_an_output_is_held_back_until_commit(mesh: Mesh) -> None:
    mesh.give("writer", inputs=set(), outputs_allowed=True)
    schema = pa.schema([("k", pa.string())])

    def staged(commit: bool) -> str | None:
        with mesh.client("writer").open_output("staged-out", schema) as output:
            output.write(pa.table({"k": ["a", "b"]}, schema=schema))
            output.write(pa.record_batch({"k": ["c"]}, schema=schema))
            return output.commit() if commit else None

    assert await off_loop(lambda: staged(commit=False)) is None  # left the block: aborted
    await _eventually(lambda: mesh.service.counts["writes_aborted"] == 1, "the server saw the abort")
    assert "staged-out" not in [d.meta.name for d in await mesh.store.list("DomainData")]
    assert await off_loop(lambda: staged(commit=True)) == "staged-out"
    data = await mesh.store.get("DomainData", "staged-out")
    assert isinstance(data, DomainData) and data.spec.attributes["rows"] == "3"
