"""The PSI task config: defaults, semantics-relevant digest, and messages that name the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from accord.engines.psi.config import check_parties, parse_config
from accord.engines.psi.errors import ConfigError


def config(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "protocol": "ECDH",
        "engine": "builtin",
        "inputs": {
            "alice": {"data": "alice-table", "keys": ["id"]},
            "bob": {"path": "/data/bob.csv", "keys": ["uid"]},
        },
    }
    doc.update(overrides)
    return doc


def error_of(doc: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(info.value)


def test_defaults() -> None:
    parsed = parse_config(json.dumps(config()))
    assert parsed.join == "inner"
    assert parsed.duplicates == "error"
    assert parsed.receiver_set == {"alice", "bob"}
    assert parsed.parties == ["alice", "bob"]
    assert parsed.workers is None


def test_protocol_is_case_insensitive_and_normalised() -> None:
    assert parse_config(config(protocol="ecdh")).protocol == "ECDH"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            config(inputs={"alice": {"data": "a", "keys": ["id"]}, "bob": {"data": "b", "keys": []}}),
            "inputs.bob.keys: must not be empty",
        ),
        (config(receivers=["carol"]), "receivers: 'carol' is not a party of this task"),
        (config(receivers=[]), "receivers: must not be empty"),
        (config(join="outer"), "join: Input should be 'inner' or 'left'"),
        (config(duplicates="drop"), "duplicates: Input should be 'error', 'keep-first' or 'keep-all'"),
        (config(protocol="RR22"), "protocol: the built-in engine runs only 'ECDH'"),
        (config(engine="spu"), "engine: must be 'builtin' for this engine"),
        (
            config(inputs={"alice": {"data": "a", "keys": ["id"]}}),
            "inputs: exactly two parties are supported, got 1",
        ),
        (
            config(inputs={"alice": {"keys": ["id"]}, "bob": {"data": "b", "keys": ["id"]}}),
            "inputs.alice: give exactly one of 'data'",
        ),
        (
            config(
                inputs={
                    "alice": {"data": "a", "path": "p", "keys": ["id"]},
                    "bob": {"data": "b", "keys": ["id"]},
                }
            ),
            "inputs.alice: give exactly one of 'data'",
        ),
        (
            config(
                inputs={
                    "alice": {"data": "a", "keys": ["id", "id"]},
                    "bob": {"data": "b", "keys": ["x", "y"]},
                }
            ),
            "inputs.alice.keys: 'id' is listed twice",
        ),
        (
            config(inputs={"alice": {"data": "a", "keys": ["id"]}, "bob": {"data": "b", "keys": ["x", "y"]}}),
            "inputs: both parties need the same number of key columns (alice: 1, bob: 2)",
        ),
        (
            config(
                inputs={
                    "alice": {"data": "a", "keys": ["id"], "colums": 1},
                    "bob": {"data": "b", "keys": ["x"]},
                }
            ),
            "inputs.alice.colums: is not a known field",
        ),
        (
            {"inputs": {"alice": {"data": "a"}, "bob": {"data": "b", "keys": ["x"]}}},
            "inputs.alice.keys: is required",
        ),
        (config(workers=-1), "workers: Input should be greater than or equal to 0"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
        ("", "TASK_INPUT_CONFIG is empty"),
    ],
)
def test_messages_name_the_field(doc: Any, expected: str) -> None:
    assert expected in error_of(doc)


def test_every_problem_is_reported_at_once() -> None:
    message = error_of(config(join="outer", duplicates="nope"))
    assert "join:" in message and "duplicates:" in message


def test_parties_must_match_the_task() -> None:
    parsed = parse_config(config())
    check_parties(parsed, ["bob", "alice"], "alice")
    with pytest.raises(ConfigError, match="inputs: 'bob' is not a party of this task"):
        check_parties(parsed, ["alice", "carol"], "alice")


def test_digest_ignores_paths_and_tuning_but_not_semantics() -> None:
    base = parse_config(config())
    moved = parse_config(
        config(
            inputs={"alice": {"path": "/x.csv", "keys": ["k"]}, "bob": {"data": "d", "keys": ["id"]}},
            workers=3,
            output_path="elsewhere.csv",
        )
    )
    assert base.digest() == moved.digest()
    assert base.digest() != parse_config(config(join="left")).digest()
    assert base.digest() != parse_config(config(receivers=["bob"])).digest()
    assert base.digest() != parse_config(config(duplicates="keep-all")).digest()
