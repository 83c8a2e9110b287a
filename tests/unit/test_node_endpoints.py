"""`run/endpoints.json`: what a running node publishes, when a record is stale, and how the client and
the CLI use it (a node started with `api_port = 0` is found; without a live record, the configured port).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.api.testing import RunningNode, serve_node_dir
from accord.cli.app import app
from accord.client import AccordClient
from accord.errors import Unavailable
from accord.node import endpoints
from accord.settings import NodeSettings, load_settings

TOKEN = "endpoints-test-token"


def record(settings: NodeSettings, api_port: int = 41001, **changes: object) -> endpoints.Endpoints:
    rec = endpoints.this_process(
        settings, api_port=api_port, gateway_port=41002, egress_port=41003, datamesh_port=41004
    )
    return dataclasses.replace(rec, **changes)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    (tmp_path / "alice").mkdir()
    return NodeSettings(domain="alice", dir=tmp_path / "alice", api_port=0)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_publish_is_private_and_reads_back(settings: NodeSettings) -> None:
    rec = record(settings)
    endpoints.publish(settings, rec)
    assert stat.S_IMODE(settings.endpoints_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.run_dir.stat().st_mode) == 0o700
    assert endpoints.read(settings) == rec
    assert endpoints.read_live(settings) == rec
    data = json.loads(settings.endpoints_path.read_text())
    assert data["pid"] == os.getpid() and data["api_url"] == "http://127.0.0.1:41001"
    assert data["gateway_port"] == 41002 and data["egress_port"] == 41003 and data["datamesh_port"] == 41004
    assert [p.name for p in settings.run_dir.iterdir()] == ["endpoints.json"]  # no temp file left


def test_records_of_gone_or_other_processes_are_stale(settings: NodeSettings) -> None:
    endpoints.publish(settings, record(settings, pid=dead_pid()))
    assert endpoints.read(settings) is not None and endpoints.read_live(settings) is None
    ticks = record(settings).start_ticks
    assert ticks is not None
    endpoints.publish(settings, record(settings, start_ticks=ticks + 1))  # our pid, reused: another process
    assert endpoints.read_live(settings) is None
    endpoints.publish(settings, record(settings, boot_id="another-boot"))
    assert endpoints.read_live(settings) is None


def test_unreadable_records_are_ignored(settings: NodeSettings, tmp_path: Path) -> None:
    settings.run_dir.mkdir()
    settings.endpoints_path.write_text("{not json")
    assert endpoints.read(settings) is None
    settings.endpoints_path.write_text('{"pid": 1}')
    assert endpoints.read(settings) is None
    settings.endpoints_path.unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(dataclasses.asdict(record(settings))))
    settings.endpoints_path.symlink_to(elsewhere)
    assert endpoints.read(settings) is None  # never through a link


def test_withdraw_removes_only_this_process_record(settings: NodeSettings) -> None:
    endpoints.publish(settings, record(settings, pid=os.getpid() + 100_000))
    endpoints.withdraw(settings)
    assert settings.endpoints_path.exists()
    endpoints.publish(settings, record(settings))
    endpoints.withdraw(settings)
    assert not settings.endpoints_path.exists()
    endpoints.withdraw(settings)  # nothing there: fine


def test_wildcard_and_ipv6_hosts_become_reachable_urls() -> None:
    assert endpoints.local_url("0.0.0.0", 1) == "http://127.0.0.1:1"
    assert endpoints.local_url("::", 2) == "http://127.0.0.1:2"
    assert endpoints.local_url("::1", 3) == "http://[::1]:3"
    assert endpoints.local_url("10.0.0.5", 4) == "http://10.0.0.5:4"


# -- the client and the CLI ----------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    """A running API whose accord.toml says `api_port = 0`, as a node started with port 0 leaves it."""
    with serve_node_dir(tmp_path / "alice", token=TOKEN) as running:
        config = running.dir / "accord.toml"
        config.write_text(
            config.read_text().replace(f"api_port = {running.url.rsplit(':', 1)[1]}", "api_port = 0")
        )
        assert load_settings(running.dir, env={}).api_port == 0
        yield running


def publish_for(node: RunningNode, **changes: object) -> None:
    settings = load_settings(node.dir, env={})
    endpoints.publish(settings, record(settings, api_port=int(node.url.rsplit(":", 1)[1]), **changes))


def test_client_finds_a_node_by_its_published_endpoints(node: RunningNode) -> None:
    publish_for(node)
    with AccordClient.from_node_dir(node.dir) as client:
        assert client.base_url == node.url
        assert client.health()


def test_client_without_a_live_record_uses_the_configured_port(node: RunningNode) -> None:
    with AccordClient.from_node_dir(node.dir) as client:
        assert client.base_url == "http://127.0.0.1:0"
        with pytest.raises(Unavailable, match="is not running"):
            client.health()
    publish_for(node, pid=dead_pid())  # left behind by a killed node
    with AccordClient.from_node_dir(node.dir) as client:
        assert client.base_url == "http://127.0.0.1:0"


def test_cli_reaches_the_node_through_the_record(node: RunningNode) -> None:
    publish_for(node)
    result = CliRunner().invoke(app, ["node", "status"], env={"ACCORD_DIR": str(node.dir)})
    assert result.exit_code == 0, result.stderr
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in result.stdout.splitlines())}
    assert fields["domain"] == "alice"
    assert {"pid", "gateway", "egress", "datamesh"} <= set(fields)


def test_the_node_dir_lock_admits_one_holder_at_a_time(settings: NodeSettings) -> None:
    first = endpoints.lock_node_dir(settings)
    assert first is not None
    try:
        assert endpoints.lock_node_dir(settings) is None  # a second node (even before any record)
        assert stat.S_IMODE(os.stat(settings.run_dir / endpoints.LOCK_FILE).st_mode) == 0o600
    finally:
        os.close(first)
    again = endpoints.lock_node_dir(settings)  # released with its holder
    assert again is not None
    os.close(again)
