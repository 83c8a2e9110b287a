"""Settings precedence (file -> env -> flags), validation, and `accord node init` files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from accord.errors import AlreadyExists, InvalidArgument
from accord.kms.identity import common_name, fingerprint
from accord.node.bootstrap import init_node_dir
from accord.settings import load_settings


def test_init_writes_identity_with_private_modes(tmp_path: Path) -> None:
    s = init_node_dir(domain="alice", directory=tmp_path / "a", api_port=9001)
    assert s.domain == "alice" and s.api_port == 9001
    assert stat.S_IMODE(s.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(s.token_path.stat().st_mode) == 0o600
    assert common_name(s.cert_path.read_bytes()) == "alice"
    assert len(fingerprint(s.cert_path.read_bytes())) == 64
    with pytest.raises(AlreadyExists, match="--force"):
        init_node_dir(domain="alice", directory=tmp_path / "a")


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    init_node_dir(domain="alice", directory=tmp_path, api_port=9001, gateway_port=9443)
    s = load_settings(tmp_path, env={"ACCORD_API_PORT": "9002", "ACCORD_ENABLE_APPROVAL": "true"})
    assert s.api_port == 9002 and s.gateway_port == 9443 and s.enable_approval
    s = load_settings(tmp_path, overrides={"api_port": 9003}, env={"ACCORD_API_PORT": "9002"})
    assert s.api_port == 9003
    with pytest.raises(ValidationError, match="frozen"):
        s.api_port = 1  # type: ignore[misc]


def test_invalid_settings_are_named(tmp_path: Path) -> None:
    init_node_dir(domain="alice", directory=tmp_path)
    with pytest.raises(InvalidArgument, match="api_port"):
        load_settings(tmp_path, env={"ACCORD_API_PORT": "99999"})
    (tmp_path / "accord.toml").write_text('domain = "alice"\napi_prot = 1\n')
    with pytest.raises(InvalidArgument, match="api_prot"):
        load_settings(tmp_path, env={})
    with pytest.raises(InvalidArgument, match="accord node init"):
        load_settings(tmp_path / "missing", env={})
    with pytest.raises(InvalidArgument, match="not a DNS label"):
        init_node_dir(domain="Alice_1", directory=tmp_path / "x")
