"""The link set up in a thread while the input is read, and SPU's native modules (no SPU needed)."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import pytest

from accord.engines.psi.errors import PeerUnreachable
from accord.engines.spu_psi import link, native
from accord.engines.spu_psi.link import LinkPlan, start_link

SESSION_VARIABLE = "config.session_id"  # yacl's name, dots and all
PLAN = LinkPlan("blackbox", "task-1", ["alice", "bob"], 0, 30.0, transport="http://127.0.0.1:1")


@pytest.fixture
def fake_natives(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(native, "load", lambda: calls.append("load"))
    monkeypatch.setattr(link, "probe_transport", lambda plan, client: calls.append("probe"))
    for name in link.blackbox_environment(PLAN):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_the_link_is_set_up_in_a_thread_in_order(
    fake_natives: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []

    def fake_open(plan: LinkPlan) -> str:
        fake_natives.append("open")
        threads.append(threading.current_thread().name)
        assert os.environ.get(SESSION_VARIABLE) == "task-1"  # set before the thread started
        return "lctx"

    monkeypatch.setattr(link, "open_link", fake_open)
    pending = start_link(PLAN)
    assert pending.result() == "lctx"
    assert fake_natives == ["load", "probe", "open"]
    assert pending.http is not None  # the probe's client, kept for draining the probe
    pending.http.close()
    assert threads != [threading.current_thread().name]
    assert pending.elapsed_s >= 0


def test_a_direct_link_skips_the_probe(fake_natives: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    direct = LinkPlan("direct", "t", ["alice", "bob"], 1, 30.0, addresses={"alice": "a:1", "bob": "b:2"})
    monkeypatch.setattr(link, "open_link", lambda plan: "lctx")
    assert start_link(direct).result() == "lctx"
    assert fake_natives == ["load"]
    assert SESSION_VARIABLE not in os.environ


def test_a_failure_in_the_thread_is_raised_by_result(
    fake_natives: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(plan: LinkPlan, client: Any) -> None:
        raise PeerUnreachable("bob's side refused PTP session")

    monkeypatch.setattr(link, "probe_transport", refuse)
    monkeypatch.setattr(link, "open_link", lambda plan: pytest.fail("linked after a refused probe"))
    with pytest.raises(PeerUnreachable, match="refused"):
        start_link(PLAN).result()


def test_result_gives_up_after_its_timeout_while_the_link_keeps_trying(
    fake_natives: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def slow_open(plan: LinkPlan) -> str:
        release.wait(10)
        return "lctx"

    monkeypatch.setattr(link, "open_link", slow_open)
    pending = start_link(PLAN)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="bob"):
        pending.result(timeout=0.3)
    assert time.monotonic() - started < 2
    release.set()
    assert pending.result() == "lctx"


def test_without_spu_loading_the_natives_is_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if "spu" in sys.modules or _spu_installed():
        pytest.skip("SPU is installed in this environment")
    monkeypatch.setattr(native, "_loaded", None)
    with pytest.raises(ImportError, match="spu"):
        native.load()


def _spu_installed() -> Any:
    import importlib.util

    return importlib.util.find_spec("spu")
