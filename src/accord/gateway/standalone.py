"""A gateway process without a node: `python -m accord.gateway.standalone --config gateway.json`.

Why it exists: the network-namespace test runs alice, bob and carol as separate processes inside
namespaces (`ip netns exec`), and the benchmark runs gateways side by side in one process tree; neither
wants a whole node (API, store file, controllers).  The process holds an in-memory store filled from the
config file, serves both ports until SIGTERM/SIGINT, and prints one line to stdout when it is ready:

    READY {"domain": "alice", "public_port": 8443, "egress_port": 8081}

Config (JSON):

    {
      "domain": "alice",
      "dir": "/path/alice",                 # holds domain.key and domain.crt (as `accord node init`)
      "public_host": "10.231.1.1", "public_port": 8443, "egress_port": 8081,
      "peers": {"bob": "/path/bob.crt", "carol": "/path/carol.crt"},
      "routes": [{"to": "carol", "endpoint": "https://10.231.1.2:8443"},
                 {"to": "bob", "via": "carol"}],   # also "auth": "Token", "token_rotation": SECONDS
      "accept_tokens_from": ["dave"],       # inbound token grants
      "services": [{"name": "echo", "port": 9000, "allowed": ["alice"]}],
      "sessions": [{"id": "job-1-psi", "parties": ["alice", "bob"]}]  # PTP sessions (a task's)
    }

`--probe DOMAIN` runs the route handshake to DOMAIN once, prints the result as JSON and exits (0 if
Ready): a diagnostic that needs no running gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from accord.gateway.gateway import Gateway
from accord.gateway.handshake import probe
from accord.gateway.links import PeerConnector
from accord.gateway.registry import ServiceRegistry
from accord.gateway.table import RoutingTable
from accord.gateway.tls import Identity
from accord.resources.domain import Domain, DomainRoute
from accord.resources.phases import RoutePhase
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore


def _read_pem(value: str) -> str:
    return value if value.lstrip().startswith("-----BEGIN") else Path(value).read_text()


async def build_store(config: dict[str, Any]) -> MemoryStore:
    """An in-memory store holding the config's peers (partner Domains) and routes."""
    store = MemoryStore()
    me = config["domain"]
    for name, cert in config.get("peers", {}).items():
        await store.create(
            Domain.model_validate(
                {"meta": {"name": name}, "spec": {"role": "partner", "cert": _read_pem(cert)}}
            )
        )
    for route in config.get("routes", []):
        await store.create(
            DomainRoute.model_validate(
                {
                    "meta": {"name": f"{me}-{route['to']}"},
                    "spec": {
                        "source": me,
                        "destination": route["to"],
                        "endpoint": route.get("endpoint", ""),
                        "transit": route.get("via", ""),
                        "path_prefix": route.get("path_prefix", ""),
                        "authentication_type": route.get("auth", "MTLS"),
                        "token_rotation_seconds": int(route.get("token_rotation", 0)),
                    },
                }
            )
        )
    for source in config.get("accept_tokens_from", []):
        await store.create(
            DomainRoute.model_validate(
                {
                    "meta": {"name": f"{source}-{me}"},
                    "spec": {"source": source, "destination": me, "authentication_type": "Token"},
                }
            )
        )
    return store


def settings_of(config: dict[str, Any]) -> NodeSettings:
    return NodeSettings(
        domain=config["domain"],
        dir=Path(config["dir"]),
        gateway_host=config.get("public_host", "127.0.0.1"),
        gateway_port=int(config.get("public_port", 0)),
        egress_port=int(config.get("egress_port", 0)),
    )


async def serve(config: dict[str, Any]) -> None:
    settings = settings_of(config)
    store = await build_store(config)
    registry = ServiceRegistry()
    for service in config.get("services", []):
        registry.register(service["name"], int(service["port"]), allowed=set(service.get("allowed", [])))
    for session in config.get("sessions", []):
        registry.register_session(session["id"], parties=set(session["parties"]), task=session["id"])
    gateway = Gateway(
        settings,
        store,
        registry,
        key_pem=settings.key_path.read_bytes(),
        cert_pem=settings.cert_path.read_bytes(),
    )
    task = asyncio.create_task(gateway.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    ready = asyncio.create_task(gateway.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if gateway.ready.is_set():
        info = {
            "domain": settings.domain,
            "public_port": gateway.public_port,
            "egress_port": gateway.egress_port,
        }
        print("READY " + json.dumps(info), flush=True)
    ready.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def probe_once(config: dict[str, Any], destination: str) -> int:
    settings = settings_of(config)
    store = await build_store(config)
    connector = PeerConnector(
        RoutingTable(settings.domain),
        Identity(settings.key_path.read_bytes(), settings.cert_path.read_bytes()),
    )
    await connector.table.load(store)
    result = await probe(connector, destination)
    print(
        json.dumps({"phase": str(result.phase), "reason": result.reason, "peer_version": result.peer_version})
    )
    return 0 if result.phase is RoutePhase.READY else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m accord.gateway.standalone", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="JSON config (see the module docstring)")
    parser.add_argument("--probe", metavar="DOMAIN", help="handshake with DOMAIN once and exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = json.loads(Path(args.config).read_text())
    if args.probe:
        return asyncio.run(probe_once(config, args.probe))
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
