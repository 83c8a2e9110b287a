"""The SPU engine's view of the psi task config, and the dispatcher by `engine` (no SPU needed)."""

from __future__ import annotations

from typing import Any

import pytest

from accord.engines.psi.config import PsiConfig
from accord.engines.psi.errors import ConfigError
from accord.engines.spu_psi.config import SpuPsiConfig, parse_config, parse_task_config


def doc(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "engine": "spu",
        "inputs": {"alice": {"data": "a", "keys": ["id"]}, "bob": {"path": "/b.csv", "keys": ["uid"]}},
    }
    base.update(overrides)
    return base


def error_of(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


def test_defaults_are_rr22_and_both_receivers() -> None:
    config = parse_config(doc())
    assert (config.protocol, config.engine, config.join, config.duplicates) == (
        "RR22",
        "spu",
        "inner",
        "error",
    )
    assert config.receiver_set == {"alice", "bob"}
    assert parse_config({k: v for k, v in doc().items() if k != "engine"}).engine == "spu"


def test_ecdh_is_the_option_case_insensitive() -> None:
    assert parse_config(doc(protocol="ecdh")).protocol == "ECDH"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (doc(protocol="KKRT"), "protocol: the spu engine runs 'RR22' or 'ECDH' (got 'KKRT')"),
        (doc(engine="builtin"), "engine: must be 'spu' for the spu-psi AppImage (got 'builtin')"),
        (doc(workers=2), "workers: tunes the built-in engine only; remove it for engine 'spu'"),
        (doc(batch_rows=10), "batch_rows: tunes the built-in engine only"),
        (doc(receivers=["carol"]), "receivers: 'carol' is not a party of this task"),
        (doc(join="outer"), "join: Input should be 'inner' or 'left'"),
        ("", "TASK_INPUT_CONFIG is empty"),
        ("[1]", "TASK_INPUT_CONFIG must be a JSON object, got list"),
    ],
)
def test_errors_name_the_field(raw: Any, expected: str) -> None:
    assert expected in error_of(raw)


def test_one_receive_timeout_covers_the_peer_wait_and_a_silent_peer() -> None:
    assert parse_config(doc(peer_wait_s=50, peer_timeout_s=20)).recv_timeout_s == 50
    assert parse_config(doc(peer_wait_s=5, peer_timeout_s=20)).recv_timeout_s == 20


def test_digest_covers_what_both_engines_must_agree_on_only() -> None:
    base = parse_config(doc()).digest()
    other_paths = doc(
        inputs={"alice": {"path": "/x.csv", "keys": ["k"]}, "bob": {"data": "y", "keys": ["z"]}}
    )
    assert parse_config(other_paths).digest() == base
    assert parse_config(doc(peer_wait_s=1)).digest() == base
    for change in (
        {"protocol": "ECDH"},
        {"join": "left"},
        {"duplicates": "keep-all"},
        {"receivers": ["bob"]},
    ):
        assert parse_config(doc(**change)).digest() != base


def test_dispatch_by_engine() -> None:
    assert isinstance(parse_task_config(doc()), SpuPsiConfig)
    builtin = parse_task_config(doc(engine="builtin", protocol="ECDH"))
    assert isinstance(builtin, PsiConfig) and not isinstance(builtin, SpuPsiConfig)
    no_engine = {k: v for k, v in doc(protocol="ECDH").items() if k != "engine"}
    assert not isinstance(parse_task_config(no_engine), SpuPsiConfig)
    with pytest.raises(ConfigError, match="protocol: the built-in engine runs only 'ECDH'"):
        parse_task_config(doc(engine="builtin", protocol="RR22"))
