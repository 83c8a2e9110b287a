"""The server side of the route handshake: identity, destination and version checks."""

from __future__ import annotations

import json

import pytest

from accord import PROTOCOL_VERSION
from accord.gateway.handshake import answer, phase_of
from accord.gateway.refusals import BadRequest, Misdirected, NotAllowed, PeerUnreachable, VersionMismatch
from accord.resources.phases import RoutePhase


def _req(**fields: object) -> bytes:
    body = {"source": "alice", "destination": "bob", "protocol_versions": [PROTOCOL_VERSION], "nonce": "n1"}
    body.update(fields)
    return json.dumps(body).encode()


def test_answer_echoes_nonce_and_reports_what_it_saw() -> None:
    reply = answer("bob", "alice", "f" * 64, _req())
    assert reply["domain"] == "bob" and reply["nonce"] == "n1"
    assert reply["protocol_version"] == PROTOCOL_VERSION and reply["client_fingerprint"] == "f" * 64


def test_answer_refusals() -> None:
    with pytest.raises(NotAllowed, match="authenticated as 'alice'"):
        answer("bob", "alice", "f", _req(source="carol"))
    with pytest.raises(Misdirected):
        answer("bob", "alice", "f", _req(destination="carol"))
    with pytest.raises(VersionMismatch, match="offered 99"):
        answer("bob", "alice", "f", _req(protocol_versions=["99"]))
    with pytest.raises(BadRequest):
        answer("bob", "alice", "f", b"{not json")


def test_phase_of_refusals() -> None:
    assert phase_of(VersionMismatch("x")) is RoutePhase.UNAUTHORIZED
    assert phase_of(NotAllowed("x")) is RoutePhase.UNAUTHORIZED
    assert phase_of(PeerUnreachable("x")) is RoutePhase.UNREACHABLE
