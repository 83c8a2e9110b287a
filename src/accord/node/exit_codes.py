"""Exit codes of `accord node start`, one per way a node can stop, with the help a person needs."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    CONFIG_INVALID = 3
    STORE_UNAVAILABLE = 4
    PORT_IN_USE = 5
    MODULE_CRASHED = 6
    ALREADY_RUNNING = 7


HELP: dict[ExitCode, str] = {
    ExitCode.OK: "stopped cleanly",
    ExitCode.FAILED: "failed; see the log above",
    ExitCode.CONFIG_INVALID: "the node settings are invalid; fix accord.toml or the ACCORD_* variables",
    ExitCode.STORE_UNAVAILABLE: "the store could not be opened; check store_url and that the database runs",
    ExitCode.PORT_IN_USE: "a port is already in use; stop the other process or change the port",
    ExitCode.MODULE_CRASHED: "a node module crashed; the log names it and the cause",
    ExitCode.ALREADY_RUNNING: "a node already runs from this directory; stop it first (`accord node status`)",
}
