"""Fixtures: a factory of real gateways (stopped at teardown) and test engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from accord.gateway import GatewayConfig
from tests.integration.gateway.engines import EchoEngine, TcpEcho
from tests.integration.gateway.harness import GatewayNode, make_node

NodeFactory = Callable[..., "GatewayNode"]


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    started: list[GatewayNode] = []

    async def factory(
        name: str, *, key_cert: tuple[bytes, bytes] | None = None, config: GatewayConfig | None = None
    ) -> GatewayNode:
        node = make_node(name, tmp_path, key_cert=key_cert, config=config)
        await node.start()
        started.append(node)
        return node

    yield factory
    for node in reversed(started):
        await node.stop()


@pytest.fixture
async def echo() -> AsyncIterator[EchoEngine]:
    engine = await EchoEngine().start()
    yield engine
    await engine.stop()


@pytest.fixture
async def tcp_echo() -> AsyncIterator[TcpEcho]:
    engine = await TcpEcho().start()
    yield engine
    await engine.stop()
