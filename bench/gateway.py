"""Gateway figures: forwarded vs direct throughput, added latency, and many concurrent streams.

Run: `.venv/bin/python bench/gateway.py [--gib 1] [--requests 3000] [--quick]`.

Side by side in one process tree (this process is the client; children are started and stopped here):

    direct     client --TLS 1.3--> engine                       (what two engines would do alone)
    forwarded  client --HTTP--> alice egress --mTLS--> bob public --HTTP--> engine   (through Accord)

The engine is a small asyncio HTTP/1.1 server (`--role engine`) listening on 20 loopback ports (one per
"task") plus one TLS port for the direct baseline.  The gateways are two `accord.gateway.standalone`
processes.  Figures:

1. throughput of a `--gib` GiB request body (upload) and response body (download), direct vs forwarded;
2. latency of small requests on one keep-alive connection, p50 / p99, direct vs forwarded, and the
   difference (the latency the two gateways add);
3. 100 concurrent streaming uploads from 20 tasks (5 each, every task its own service and engine port),
   aggregate throughput.

Targets (issue 3): forwarded throughput >= 0.5x direct; p50 added latency <= 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accord.kms.identity import generate_identity

MiB = 1 << 20
CHUNK = bytes(MiB)
TASKS = 20
STREAMS_PER_TASK = 5


# -- the engine (child process) -----------------------------------------------------------------------


async def _engine_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.split(b"\r\n")
            _, target, _ = lines[0].split(b" ", 2)
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            remaining = length
            while remaining:
                data = await reader.read(min(remaining, 256 * 1024))
                if not data:
                    return
                remaining -= len(data)
            if target.startswith(b"/source"):
                size = int(target.split(b"n=")[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                sent = 0
                while sent < size:
                    piece = CHUNK[: min(MiB, size - sent)]
                    writer.write(piece)
                    sent += len(piece)
                    await writer.drain()
            else:
                body = b"%d" % length
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    finally:
        writer.close()


async def _engine(ports: list[int], tls_port: int, cert_dir: Path) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_dir / "domain.crt", cert_dir / "domain.key")
    servers = [await asyncio.start_server(_engine_conn, "127.0.0.1", p, limit=256 * 1024) for p in ports]
    servers.append(await asyncio.start_server(_engine_conn, "127.0.0.1", tls_port, ssl=ctx, limit=256 * 1024))
    print("READY", flush=True)
    await asyncio.Event().wait()


# -- the client (this process) ------------------------------------------------------------------------


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _open(port: int, tls: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=_client_ctx() if tls else None, limit=256 * 1024
    )


async def _response(reader: asyncio.StreamReader, drain_body: bool = True) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    if drain_body:
        remaining = length
        while remaining:
            data = await reader.read(min(remaining, 256 * 1024))
            if not data:
                raise ConnectionError("closed early")
            remaining -= len(data)
    return length


async def upload(port: int, tls: bool, host: bytes, size: int) -> float:
    reader, writer = await _open(port, tls)
    start = time.perf_counter()
    writer.write(b"POST /sink HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (host, size))
    sent = 0
    while sent < size:
        piece = CHUNK[: min(MiB, size - sent)]
        writer.write(piece)
        sent += len(piece)
        await writer.drain()
    await _response(reader)
    elapsed = time.perf_counter() - start
    writer.close()
    return size / elapsed / MiB


async def download(port: int, tls: bool, host: bytes, size: int) -> float:
    reader, writer = await _open(port, tls)
    start = time.perf_counter()
    writer.write(b"GET /source?n=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, host))
    assert await _response(reader) == size
    elapsed = time.perf_counter() - start
    writer.close()
    return size / elapsed / MiB


async def latencies(port: int, tls: bool, host: bytes, n: int) -> list[float]:
    reader, writer = await _open(port, tls)
    request = b"GET /ping HTTP/1.1\r\nHost: %s\r\n\r\n" % host
    out = []
    for i in range(n + 50):
        start = time.perf_counter()
        writer.write(request)
        await _response(reader)
        if i >= 50:  # warm-up excluded
            out.append((time.perf_counter() - start) * 1000)
    writer.close()
    return out


async def concurrent_streams(egress: int, size: int) -> tuple[float, int]:
    async def one(task: int) -> int:
        reader, writer = await _open(egress, False)
        host = b"task-%d.bob.svc" % task
        writer.write(b"POST /sink HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (host, size))
        sent = 0
        while sent < size:
            piece = CHUNK[: min(256 * 1024, size - sent)]
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read(64)
        writer.close()
        return int(body) if head.startswith(b"HTTP/1.1 200") else -1

    start = time.perf_counter()
    results = await asyncio.gather(*(one(t) for t in range(TASKS) for _ in range(STREAMS_PER_TASK)))
    elapsed = time.perf_counter() - start
    ok = sum(1 for r in results if r == size)
    return ok * size / elapsed / MiB, ok


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _spawn(args: list[str], log: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"{args} did not start: {line!r}; see {log}")
    return proc, line


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(args: argparse.Namespace) -> dict[str, float]:
    size = int(args.gib * 1024 * MiB)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as tmp:
        work = Path(tmp)
        configs = {}
        for domain in ("alice", "bob"):
            d = work / domain
            d.mkdir()
            key, cert = generate_identity(domain)
            (d / "domain.key").write_bytes(key)
            (d / "domain.crt").write_bytes(cert)
            configs[domain] = {"domain": domain, "dir": str(d), "public_port": 0, "egress_port": 0}
        engine_ports = [_free_port() for _ in range(TASKS)]
        tls_port = _free_port()
        procs = []
        try:
            engine, _ = _spawn(
                [
                    sys.executable,
                    __file__,
                    "--role",
                    "engine",
                    "--ports",
                    ",".join(map(str, engine_ports)),
                    "--tls-port",
                    str(tls_port),
                    "--cert-dir",
                    str(work / "bob"),
                ],
                work / "engine.log",
            )
            procs.append(engine)
            configs["bob"]["peers"] = {"alice": str(work / "alice" / "domain.crt")}
            configs["bob"]["services"] = [
                {"name": f"task-{i}", "port": p, "allowed": ["alice"]} for i, p in enumerate(engine_ports)
            ]
            (work / "bob.json").write_text(json.dumps(configs["bob"]))
            standalone = [
                sys.executable,
                "-m",
                "accord.gateway.standalone",
                "--log-level",
                "WARNING",
                "--config",
            ]
            bob, line = _spawn([*standalone, str(work / "bob.json")], work / "bob.log")
            procs.append(bob)
            bob_port = json.loads(line.split(" ", 1)[1])["public_port"]
            configs["alice"]["peers"] = {"bob": str(work / "bob" / "domain.crt")}
            configs["alice"]["routes"] = [{"to": "bob", "endpoint": f"https://127.0.0.1:{bob_port}"}]
            (work / "alice.json").write_text(json.dumps(configs["alice"]))
            alice, line = _spawn([*standalone, str(work / "alice.json")], work / "alice.log")
            procs.append(alice)
            egress = json.loads(line.split(" ", 1)[1])["egress_port"]
            host = b"task-0.bob.svc"

            print(f"1. {args.gib:g} GiB stream (MiB/s)")
            for name, fn in (("upload", upload), ("download", download)):
                direct = await fn(tls_port, True, b"engine", size)
                forwarded = await fn(egress, False, host, size)
                results[f"{name}_direct_mibps"] = direct
                results[f"{name}_forwarded_mibps"] = forwarded
                results[f"{name}_ratio"] = forwarded / direct
                ratio = forwarded / direct
                print(
                    f"   {name:9s} direct TLS {direct:8.1f}   forwarded {forwarded:8.1f}   ratio {ratio:.2f}"
                )

            print(f"2. small-request latency, {args.requests} sequential keep-alive requests (ms)")
            direct_lat = await latencies(tls_port, True, b"engine", args.requests)
            fwd_lat = await latencies(egress, False, host, args.requests)
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                d, f = pct(direct_lat, q), pct(fwd_lat, q)
                results[f"latency_{label}_direct_ms"] = d
                results[f"latency_{label}_forwarded_ms"] = f
                results[f"latency_{label}_added_ms"] = f - d
                print(f"   {label}  direct {d:6.3f}   forwarded {f:6.3f}   added {f - d:6.3f}")

            stream_size = (4 if args.quick else 16) * MiB
            streams = TASKS * STREAMS_PER_TASK
            print(f"3. {streams} concurrent streams from {TASKS} tasks, {stream_size // MiB} MiB each")
            rate, ok = await concurrent_streams(egress, stream_size)
            results["concurrent_streams_ok"] = ok
            results["concurrent_aggregate_mibps"] = rate
            print(f"   {ok}/{TASKS * STREAMS_PER_TASK} completed, aggregate {rate:.1f} MiB/s")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print("RESULT " + json.dumps({k: round(v, 3) for k, v in results.items()}))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", default="client", choices=["client", "engine"])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the throughput stream in GiB")
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests for latency")
    parser.add_argument("--quick", action="store_true", help="smaller concurrent streams")
    parser.add_argument("--ports", default="")
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--cert-dir", default="")
    args = parser.parse_args()
    if args.role == "engine":
        asyncio.run(_engine([int(p) for p in args.ports.split(",")], args.tls_port, Path(args.cert_dir)))
        return
    print(f"bench/gateway.py on {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
