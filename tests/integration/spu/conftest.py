"""The SPU environment for the test session, and two real gateways per test.

`spu_python` installs SPU's environment exactly as `accord engine install spu` does (pip from the
package index, about 20 s plus the download the first time) into the machine's engines dir
(`$ACCORD_ENGINES_DIR`, default `~/.local/share/accord/engines`), where it stays: later sessions find it
installed and start at once.  Under `CI=true` a failed install fails the tests; elsewhere they are
skipped, and the reason is repeated in red in the terminal summary so a green run is never mistaken for
an SPU-tested one.

`ptp_pair` starts two in-process gateways (alice, bob) that pin each other and route to each other, as
the gateway tests do; the engines talk only through their egress ports' PTP transport.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from accord.runtimes.engines import EngineInstallError, install_engine
from tests.integration.gateway.harness import GatewayNode, make_node, mesh
from tests.postgres import running_under_ci

log = logging.getLogger(__name__)
_skip_reasons: list[str] = []


@pytest.fixture(scope="session")
def spu_python() -> Path:
    try:
        installed = install_engine("spu", say=log.info)
    except (EngineInstallError, OSError) as exc:
        message = getattr(exc, "message", str(exc))
        if running_under_ci():
            pytest.fail(f"CI=true requires the SPU environment: {message}", pytrace=False)
        _skip_reasons.append(message)
        pytest.skip(f"NO SPU ENVIRONMENT: {message}")
    return installed.python


@pytest.fixture
async def ptp_pair(tmp_path: Path) -> AsyncIterator[dict[str, GatewayNode]]:
    alice = await make_node("alice", tmp_path / "gateways").start()
    bob = await make_node("bob", tmp_path / "gateways").start()
    try:
        await mesh(alice, bob)
        await alice.route("bob", bob.endpoint)
        await bob.route("alice", alice.endpoint)
        yield {"alice": alice, "bob": bob}
    finally:
        await bob.stop()
        await alice.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason in dict.fromkeys(_skip_reasons):
        terminalreporter.write_sep("!", "SPU tests were SKIPPED", red=True, bold=True)
        terminalreporter.write_line(f"  {reason}", red=True, bold=True)
