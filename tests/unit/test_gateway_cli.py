"""`accord domain ...` and `accord route ...` through typer's CliRunner against a real API server."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from accord.api.testing import RunningNode, serve_node_dir
from accord.cli.app import app
from accord.kms.identity import fingerprint, generate_identity

TOKEN = "gateway-cli-token"


@functools.cache
def cert(name: str) -> bytes:
    return generate_identity(name)[1]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    with serve_node_dir(tmp_path / "alice", token=TOKEN, domain="alice") as running:
        yield running


def accord(node: RunningNode, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"ACCORD_DIR": str(node.dir)})


def _cert_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.crt"
    path.write_bytes(cert(name))
    return path


def test_domain_add_list_delete(node: RunningNode, tmp_path: Path) -> None:
    result = accord(node, "domain", "add", "bob", "--cert", str(_cert_file(tmp_path, "bob")))
    assert result.exit_code == 0, result.stderr
    fp = fingerprint(cert("bob"))
    assert fp[:4].upper() in result.stdout.replace(":", "")
    listed = accord(node, "domain", "list")
    assert listed.exit_code == 0
    assert "bob" in listed.stdout and "partner" in listed.stdout and fp[:16] in listed.stdout
    as_json = json.loads(accord(node, "domain", "list", "-o", "json").stdout)
    assert [d["meta"]["name"] for d in as_json["items"]] == ["bob"]
    again = accord(node, "domain", "add", "bob", "--cert", str(_cert_file(tmp_path, "bob")))
    assert again.exit_code == 1 and "already exists" in again.stderr
    replaced = accord(node, "domain", "add", "bob", "--cert", str(_cert_file(tmp_path, "bob2")), "--replace")
    assert replaced.exit_code == 0 and "note: the certificate's subject CN is 'bob2'" in replaced.stdout
    assert accord(node, "domain", "delete", "bob").exit_code == 0
    assert "bob" not in accord(node, "domain", "list").stdout


def test_domain_add_rejects_bad_input(node: RunningNode, tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    result = accord(node, "domain", "add", "bob", "--cert", str(junk))
    assert result.exit_code == 1 and "not a PEM X.509 certificate" in result.stderr
    result = accord(node, "domain", "add", "Bob_1", "--cert", str(_cert_file(tmp_path, "bob")))
    assert result.exit_code == 1 and "DNS label" in result.stderr
    result = accord(node, "domain", "add", "bob", "--cert", str(tmp_path / "missing.crt"))
    assert result.exit_code == 1 and "cannot read certificate" in result.stderr


def test_route_add_list_delete(node: RunningNode, tmp_path: Path) -> None:
    no_domain = accord(node, "route", "add", "--to", "bob", "--endpoint", "https://10.0.0.2:8443")
    assert no_domain.exit_code == 1 and "accord domain add bob" in no_domain.stderr
    for name in ("bob", "carol"):
        assert accord(node, "domain", "add", name, "--cert", str(_cert_file(tmp_path, name))).exit_code == 0
    made = accord(node, "route", "add", "--to", "carol", "--endpoint", "https://10.0.0.3:8443")
    assert made.exit_code == 0, made.stderr
    assert "route alice-carol created: alice -> carol" in made.stdout
    via = accord(node, "route", "add", "--to", "bob", "--via", "carol", "--path-prefix", "/gw")
    assert via.exit_code == 0, via.stderr
    listed = accord(node, "route", "list")
    assert listed.exit_code == 0
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "carol" in rows["alice-bob"] and "Pending" in rows["alice-bob"]
    doc = json.loads(accord(node, "route", "list", "-o", "json").stdout)["items"]
    spec = {d["meta"]["name"]: d["spec"] for d in doc}
    assert spec["alice-bob"]["transit"] == "carol" and spec["alice-bob"]["path_prefix"] == "/gw"
    assert spec["alice-carol"]["authentication_type"] == "MTLS"
    assert accord(node, "route", "delete", "--to", "bob").exit_code == 0
    assert accord(node, "route", "delete", "alice-carol").exit_code == 0
    assert "no DomainRoute objects found" in accord(node, "route", "list").stdout


def test_route_add_validates_before_sending(node: RunningNode, tmp_path: Path) -> None:
    accord(node, "domain", "add", "bob", "--cert", str(_cert_file(tmp_path, "bob")))
    cases = [
        (["--to", "bob"], "needs --endpoint"),
        (["--to", "bob", "--endpoint", "http://h:1"], "must be https://HOST:PORT"),
        (["--to", "bob", "--endpoint", "https://h"], "has no port"),
        (["--to", "bob", "--endpoint", "https://h:1", "--auth", "basic"], "--auth must be one of"),
        (["--to", "alice", "--endpoint", "https://h:1"], "to itself"),
    ]
    for args, message in cases:
        result = accord(node, "route", "add", *args)
        assert result.exit_code == 1, (args, result.stdout)
        assert message in result.stderr, (args, result.stderr)


def test_route_add_wait_reports_no_verdict(node: RunningNode, tmp_path: Path) -> None:
    """Without a route controller (this test server has none) --wait says so and exits 1."""
    accord(node, "domain", "add", "bob", "--cert", str(_cert_file(tmp_path, "bob")))
    result = accord(node, "route", "add", "--to", "bob", "--endpoint", "https://h:1", "--wait", "0.5")
    assert result.exit_code == 1
    assert "route alice-bob: Pending (no verdict yet" in result.stdout


def test_route_add_from_grants_token_authentication(node: RunningNode, tmp_path: Path) -> None:
    accord(node, "domain", "add", "bob", "--cert", str(_cert_file(tmp_path, "bob")))
    result = accord(node, "route", "add", "--from", "bob", "--auth", "token")
    assert result.exit_code == 0, result.stderr
    assert "bob may authenticate to alice by token" in result.stdout
    doc = json.loads(accord(node, "route", "list", "-o", "json").stdout)["items"][0]
    assert doc["spec"]["source"] == "bob" and doc["spec"]["destination"] == "alice"
    assert doc["spec"]["authentication_type"] == "Token"
    assert accord(node, "route", "add", "--from", "bob").exit_code == 1  # a grant is for tokens only
    assert accord(node, "route", "add", "--to", "bob", "--from", "bob").exit_code == 2
    made = accord(
        node,
        "route",
        "add",
        "--to",
        "bob",
        "--endpoint",
        "https://h:1",
        "--auth",
        "token",
        "--token-rotation",
        "60",
    )
    assert made.exit_code == 0, made.stderr
    spec = {
        d["meta"]["name"]: d["spec"]
        for d in json.loads(accord(node, "route", "list", "-o", "json").stdout)["items"]
    }
    assert (
        spec["alice-bob"]["authentication_type"] == "Token"
        and spec["alice-bob"]["token_rotation_seconds"] == 60
    )
