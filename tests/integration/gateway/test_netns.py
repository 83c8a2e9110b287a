"""alice, bob and carol in three network namespaces this test creates; alice reaches bob only via carol.

Topology (addresses only inside the namespaces; nothing in the root namespace talks to them):

    ns alice  10.231.1.1 --veth-- 10.231.1.2  ns carol  10.231.2.2 --veth-- 10.231.2.1  ns bob

No namespace has a default route and carol does not forward IP, so alice has no path to bob's address:
the only way is carol's gateway.  Each gateway is a separate process (`accord.gateway.standalone`) run
with `ip netns exec`; bob's engine (the HTTP echo) listens on bob's loopback only.

Safety (see the runtimes reference): every packet is sent from inside a namespace to an address on one
of its own veth links (`ip route get` is checked first); the root namespace sends nothing; namespaces,
veths and processes are removed at the end, also on failure.  Skipped loudly without root or `ip`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.gateway.harness import identity

HERE = Path(__file__).parent
PORT = 8443
EGRESS = 8081
ENGINE = 9000

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("ss") is None,
    reason="NETNS TEST SKIPPED: needs root and the `ip` and `ss` tools to create network namespaces",
)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


class Topology:
    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = {d: f"acc-{d[0]}-{tag}" for d in ("alice", "bob", "carol")}
        self.addr = {
            "alice": "10.231.1.1",
            "carol-a": "10.231.1.2",
            "carol-b": "10.231.2.2",
            "bob": "10.231.2.1",
        }
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []
        self.created: list[str] = []

    def up(self) -> None:
        a, b, c = self.ns["alice"], self.ns["bob"], self.ns["carol"]
        for ns in (a, b, c):
            _run("ip", "netns", "add", ns)
            self.created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        tag = a.rsplit("-", 1)[1]
        for left, right, lns, rns, laddr, raddr in (
            (f"va{tag}", f"vca{tag}", a, c, self.addr["alice"], self.addr["carol-a"]),
            (f"vb{tag}", f"vcb{tag}", b, c, self.addr["bob"], self.addr["carol-b"]),
        ):
            _run("ip", "link", "add", left, "netns", lns, "type", "veth", "peer", "name", right, "netns", rns)
            _run("ip", "-n", lns, "addr", "add", f"{laddr}/24", "dev", left)
            _run("ip", "-n", rns, "addr", "add", f"{raddr}/24", "dev", right)
            _run("ip", "-n", lns, "link", "set", left, "up")
            _run("ip", "-n", rns, "link", "set", right, "up")
        _run("ip", "netns", "exec", c, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        # the routes we rely on, and the one that must not exist
        assert f"dev va{tag}" in _run("ip", "-n", a, "route", "get", self.addr["carol-a"]).stdout
        assert f"dev vcb{tag}" in _run("ip", "-n", c, "route", "get", self.addr["bob"]).stdout
        assert _run("ip", "-n", a, "route", "get", self.addr["bob"], check=False).returncode != 0

    def down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for ns in self.created:
            _run("ip", "netns", "del", ns, check=False)

    def spawn(self, domain: str, *args: str) -> subprocess.Popen[str]:
        log = (self.tmp / f"{domain}-{len(self.procs)}.log").open("w")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[domain], *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.procs.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY"):
            proc.kill()
            raise AssertionError(f"{domain}: {' '.join(args)} did not start: {line!r} {self.logs()}")
        return proc

    def exec(self, domain: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.ns[domain], *args, check=False)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    topo = Topology(tmp_path)
    try:
        topo.up()
        yield topo
    finally:
        topo.down()
    leftover = _run("ip", "netns", "list").stdout
    assert not any(ns in leftover for ns in topo.ns.values())


def _gateway_config(topo: Topology, domain: str, public_host: str, peers: list[str], **extra: object) -> Path:
    directory = topo.tmp / domain
    directory.mkdir()
    key, cert = identity(domain)
    (directory / "domain.key").write_bytes(key)
    (directory / "domain.crt").write_bytes(cert)
    config = {
        "domain": domain,
        "dir": str(directory),
        "public_host": public_host,
        "public_port": PORT,
        "egress_port": EGRESS,
        "peers": {p: identity(p)[1].decode() for p in peers},
        **extra,
    }
    path = topo.tmp / f"{domain}.json"
    path.write_text(json.dumps(config))
    return path


CLIENT = """
import http.client, json, sys
conn = http.client.HTTPConnection("127.0.0.1", %d, timeout=20)
body = bytes(range(256)) * 4096
conn.request("POST", "/info", body=body, headers={"Host": "echo.bob.svc"})
resp = conn.getresponse()
print(json.dumps({"status": resp.status, "body": json.loads(resp.read())}))
"""


def test_alice_reaches_bob_only_through_carol(topology: Topology) -> None:
    topo = topology
    py = sys.executable
    standalone = [py, "-m", "accord.gateway.standalone", "--config"]
    alice = _gateway_config(
        topo,
        "alice",
        topo.addr["alice"],
        ["bob", "carol"],
        routes=[
            {"to": "carol", "endpoint": f"https://{topo.addr['carol-a']}:{PORT}"},
            {"to": "bob", "via": "carol"},
        ],
    )
    carol = _gateway_config(
        topo,
        "carol",
        "0.0.0.0",
        ["alice", "bob"],
        routes=[{"to": "bob", "endpoint": f"https://{topo.addr['bob']}:{PORT}"}],
    )
    bob = _gateway_config(
        topo,
        "bob",
        topo.addr["bob"],
        ["alice", "carol"],
        services=[{"name": "echo", "port": ENGINE, "allowed": ["alice"]}],
    )
    topo.spawn("bob", py, str(HERE / "engines.py"), "http", str(ENGINE))
    topo.spawn("bob", *standalone, str(bob))
    topo.spawn("carol", *standalone, str(carol))
    topo.spawn("alice", *standalone, str(alice))

    # only the gateway port listens on each namespace's non-loopback interface
    for domain in ("alice", "bob", "carol"):
        listeners = topo.exec(domain, "ss", "-Hltn").stdout.split("\n")
        local = [line.split()[3] for line in listeners if line.strip()]
        assert local, f"{domain}: nothing listens?"
        exposed = [a for a in local if not a.startswith(("127.", "[::1]"))]
        assert exposed and all(a.rsplit(":", 1)[1] == str(PORT) for a in exposed), f"{domain}: {local}"

    # the route handshake reaches bob through carol, end to end
    check = topo.exec("alice", *standalone, str(alice), "--probe", "bob")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "through carol" in json.loads(check.stdout)["reason"]

    # engine-style traffic: alice's engine -> alice's egress -> carol -> bob's gateway -> bob's engine
    result = topo.exec("alice", py, "-c", CLIENT % EGRESS)
    assert result.returncode == 0, result.stderr + topo.logs()
    answer = json.loads(result.stdout)
    assert answer["status"] == 200
    assert answer["body"]["headers"]["x-accord-source-domain"] == "alice"
    assert answer["body"]["bytes"] == 256 * 4096

    # alice's engine cannot bypass carol (no route to bob's address from alice's namespace)
    direct = topo.exec(
        "alice", py, "-c", f"import socket; socket.create_connection(('{topo.addr['bob']}', {PORT}), 3)"
    )
    assert direct.returncode != 0
    # carol logged the transit, metadata only
    assert "transit alice -> bob: opened" in (topo.tmp / "carol-2.log").read_text()
