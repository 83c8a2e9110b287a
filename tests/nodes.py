"""Real Accord nodes for integration and end-to-end tests: separate processes on loopback ports.

`NodeProcess` runs `accord node start` exactly as a user would (same entry point, same node dir) so
the tests exercise the real daemon, store, API and controllers; `kill()` sends SIGKILL for crash tests.
With `zero_ports=True` every port is configured as 0 and the node is found, as users find it, through
the `run/endpoints.json` it publishes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from accord.client import AccordClient
from accord.errors import AlreadyExists
from accord.node import endpoints
from accord.node.bootstrap import init_node_dir

ACCORD = str(Path(sys.executable).with_name("accord"))
T = TypeVar("T")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port that this test process has not handed out before.

    Chosen below the kernel's ephemeral range (where a node's own `bind(0)` sockets land), so a port picked
    here for one node's gateway cannot be taken by another node's interop or DataMesh socket first.
    """
    low, _ = _ephemeral_range()
    for _ in range(1000):
        port = random.randrange(15000, max(15001, low))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # pragma: no cover - a machine with no free port below the range
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def eventually(fn: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Call `fn` until it returns a truthy value without raising; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: last error {last!r}")


class NodeProcess:
    def __init__(
        self,
        directory: Path,
        domain: str,
        *,
        store_url: str = "",
        settings: Mapping[str, Any] | None = None,
        zero_ports: bool = False,
    ) -> None:
        self.dir = directory
        self.domain = domain
        port = (lambda: 0) if zero_ports else free_port
        self.settings = init_node_dir(
            domain=domain,
            directory=directory,
            api_port=port(),
            gateway_port=port(),
            egress_port=port(),
            datamesh_port=port(),
        )
        if settings:  # e.g. {"enable_approval": True}: rewrite accord.toml with the overrides
            self.settings = self.settings.model_copy(update=dict(settings))
            (directory / "accord.toml").write_text(self.settings.to_toml())
        if store_url:
            with (directory / "accord.toml").open("a") as f:
                f.write(f'store_url = "{store_url}"\n')
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "node-process.log"

    @property
    def client(self) -> AccordClient:
        return AccordClient.from_node_dir(self.dir)

    @property
    def gateway_port(self) -> int:
        """The public port: the configured one, or the one the running node published."""
        if self.settings.gateway_port:
            return self.settings.gateway_port
        running = endpoints.read_live(self.settings)
        assert running is not None, f"node {self.domain} published no endpoints"
        return running.gateway_port

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
        self.proc = subprocess.Popen(
            [ACCORD, "node", "start", "--dir", str(self.dir)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.domain} exited {self.proc.returncode}: {self.log_tail()}")
            self.client.health()
            return True

        deadline = time.monotonic() + timeout
        while True:
            try:
                ready()
                return
            except RuntimeError:
                raise
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {self.domain} not ready: {self.log_tail()}") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node {self.domain} did not stop on SIGTERM: {self.log_tail()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ACCORD_DIR": str(self.dir)}
        return subprocess.run(
            [ACCORD, *args], env=env, text=True, capture_output=True, input=input, timeout=60
        )


def connect(*nodes: NodeProcess, timeout: float = 30.0) -> None:
    """Make every node a partner of every other: pin certificates, create routes both ways, wait for Ready.

    What two administrators do with `accord domain add` and `accord route add`; idempotent.
    """
    for a in nodes:
        for b in nodes:
            if a is b:
                continue
            cert = (b.dir / "domain.crt").read_text()
            doc = {"kind": "Domain", "meta": {"name": b.domain}, "spec": {"role": "partner", "cert": cert}}
            try:
                a.client.create(doc)
            except AlreadyExists:
                pass
    for a in nodes:
        for b in nodes:
            if a is b:
                continue
            route = {
                "kind": "DomainRoute",
                "meta": {"name": f"{a.domain}-{b.domain}"},
                "spec": {
                    "source": a.domain,
                    "destination": b.domain,
                    "endpoint": f"https://127.0.0.1:{b.gateway_port}",
                },
            }
            try:
                a.client.create(route)
            except AlreadyExists:
                pass
    for a in nodes:
        for b in nodes:
            if a is not b:
                name = f"{a.domain}-{b.domain}"
                eventually(
                    lambda a=a, name=name: a.client.get("DomainRoute", name)["status"]["phase"] == "Ready",
                    timeout=timeout,
                    what=f"route {name} to become Ready",
                )


def one_task_job(
    name: str,
    parties: Sequence[str],
    config: Mapping[str, Any] | str,
    *,
    app: str = "hello",
    alias: str = "t",
    initiator: str = "alice",
) -> dict[str, Any]:
    """A Job document (as `accord apply` takes it) with one task run by `parties`; `config` is the
    task's input config, JSON-encoded here unless it is text already."""
    return {
        "kind": "Job",
        "meta": {"name": name},
        "spec": {
            "initiator": initiator,
            "tasks": [
                {
                    "alias": alias,
                    "app_image": app,
                    "parties": [{"domain": d} for d in parties],
                    "input_config": config if isinstance(config, str) else json.dumps(config),
                }
            ],
        },
    }
