"""Two `python -m accord.engines.spu_psi` processes (SPU's venv) with the full engine contract.

Each party's engine gets the variables a node's runtime sets (TASK_*, KUSCIA_DOMAIN_ID, ALLOCATED_PORTS
with no port: blackbox engines listen on nothing) plus `ACCORD_EGRESS` = its own gateway's egress port.
The gateways have the PTP session (= the task id) registered for both parties, as a running task has.
Processes run in their own process groups and are always killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import random
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.gateway.harness import GatewayNode

PARTIES = ("alice", "bob")
TASK = "job-1-psi"


@dataclass
class Outcome:
    party: str
    returncode: int
    stdout: str
    stderr: str
    work: Path
    result: dict[str, Any] | None = None

    @property
    def reason(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def rows(self, name: str = "output.csv") -> list[dict[str, str]]:
        with (self.work / name).open(newline="") as fh:
            return list(csv.DictReader(fh))


@dataclass
class Pair:
    python: Path
    root: Path
    gateways: dict[str, GatewayNode] | None
    task: str = TASK
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    def env(self, party: str, config: dict[str, Any], extra: dict[str, str] | None) -> dict[str, str]:
        cluster = {
            "parties": [{"name": p, "role": "", "services": []} for p in PARTIES],
            "selfPartyIdx": PARTIES.index(party),
            "selfEndpointIdx": 0,
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "TASK_ID": self.task,
            "TASK_INPUT_CONFIG": json.dumps(config),
            "TASK_CLUSTER_DEFINE": json.dumps(cluster),
            "ALLOCATED_PORTS": json.dumps({"ports": []}),
            "KUSCIA_DOMAIN_ID": party,
            "ACCORD_WORK_DIR": str(self.root / party),
        }
        if self.gateways is not None:
            env["ACCORD_EGRESS"] = self.gateways[party].egress
        env.update(extra or {})
        return env

    async def start(
        self,
        configs: dict[str, dict[str, Any]],
        extra_env: dict[str, dict[str, str]] | None = None,
        parties: Sequence[str] = PARTIES,
    ) -> None:
        if self.gateways is not None:
            for node in self.gateways.values():
                if node.registry.session(self.task) is None:
                    node.registry.register_session(self.task, parties=set(PARTIES), task=self.task)
        for party in parties:
            work = self.root / party
            work.mkdir(parents=True, exist_ok=True)
            self.procs[party] = await asyncio.create_subprocess_exec(
                str(self.python),
                "-m",
                "accord.engines.spu_psi",
                env=self.env(party, configs[party], (extra_env or {}).get(party)),
                cwd=work,
                stdout=(work / "stdout.log").open("wb"),
                stderr=(work / "stderr.log").open("wb"),
                start_new_session=True,
            )

    async def wait_for_line(self, party: str, text: str, timeout: float = 60) -> None:
        log = self.root / party / "stdout.log"
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if log.exists() and text in log.read_text(errors="replace"):
                return
            if self.procs[party].returncode is not None:
                raise AssertionError(f"{party} ended before printing {text!r}")
            await asyncio.sleep(0.02)
        raise AssertionError(f"{party} did not print {text!r} within {timeout} s")

    def kill(self, party: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[party].pid, signal.SIGKILL)

    async def finish(self, timeout: float = 120) -> dict[str, Outcome]:
        try:
            codes = await asyncio.wait_for(
                asyncio.gather(*(proc.wait() for proc in self.procs.values())), timeout
            )
        finally:
            self.close()
        outcomes = {}
        for (party, _proc), code in zip(self.procs.items(), codes, strict=True):
            work = self.root / party
            result_path = work / "result.json"
            outcomes[party] = Outcome(
                party,
                code,
                (work / "stdout.log").read_text(errors="replace"),
                (work / "stderr.log").read_text(errors="replace"),
                work,
                json.loads(result_path.read_text()) if result_path.exists() else None,
            )
        return outcomes

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    async def run(
        self, configs: dict[str, dict[str, Any]], extra_env: dict[str, dict[str, str]] | None = None
    ) -> dict[str, Outcome]:
        await self.start(configs, extra_env)
        return await self.finish()


def same_config(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p: config for p in PARTIES}


SPECIAL_KEYS = ["a,b", 'q"uote', "two\nlines", "", " spaced ", "%2C", "ünï"]


def write_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def make_tables(
    root: Path, rows: int, *, overlap: float = 0.5, seed: int = 7, special: bool = True
) -> tuple[dict[str, str], set[str]]:
    """alice (id, age) and bob (id, score); returns the paths and the true intersection of ids."""
    rng = random.Random(seed)
    shared = int(rows * overlap)
    universe = [f"u{i:07d}" for i in rng.sample(range(10 * rows + 10), 2 * rows - shared)]
    ids = {"alice": universe[:rows], "bob": universe[rows - shared :]}
    if special:
        ids["alice"] = ids["alice"][: rows - len(SPECIAL_KEYS)] + SPECIAL_KEYS
        ids["bob"] = ids["bob"][: rows - len(SPECIAL_KEYS) + 2] + SPECIAL_KEYS[2:]
    paths = {}
    root.mkdir(parents=True, exist_ok=True)
    for party, column in (("alice", "age"), ("bob", "score")):
        chosen = list(ids[party])
        rng.shuffle(chosen)
        paths[party] = write_table(
            root / f"{party}.csv", ["id", column], [[key, str(rng.randint(0, 99))] for key in chosen]
        )
    return paths, set(ids["alice"]) & set(ids["bob"])


def psi_config(paths: dict[str, str], **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "engine": "spu",
        "inputs": {p: {"path": paths[p], "keys": ["id"]} for p in PARTIES},
        "peer_wait_s": 30,
        "peer_timeout_s": 30,
    }
    config.update(extra)
    return config


async def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
