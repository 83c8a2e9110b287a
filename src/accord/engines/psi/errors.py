"""Typed failures of the PSI engine, each with the exit code the entry point returns.

The engine reports failure the way every engine does (kuscia.md section 4): a non-zero exit code and one
line on stderr.  The classes below decide both, so the node can tell a user's mistake (bad config, a
missing column: fix and rerun) from a peer that went away (retry later) without parsing text.

    PsiError                      exit 1   anything unexpected
    ├── Terminated                exit 143 stopped by SIGTERM (the task was cancelled)
    ├── ConfigError               exit 2   TASK_INPUT_CONFIG / contract is wrong; message names the field
    ├── InputError                exit 3   the party's own data is unusable (missing column, duplicates)
    └── PeerError                 exit 4   the other engine: unreachable, vanished, aborted, disagreed
        ├── PeerUnreachable                never answered within `peer_wait_s`
        ├── PeerLost                       stopped answering mid-protocol ("... during round 2")
        ├── PeerAborted                    told us it failed on its side
        └── ProtocolMismatch               answered with something this engine cannot accept

Messages never carry key values or row contents: a failure reason may be shown to the other party.
"""

from __future__ import annotations


class PsiError(Exception):
    """Base class; `exit_code` is what `python -m accord.engines.psi` exits with."""

    exit_code = 1
    kind = "internal error"


class Terminated(PsiError):
    """The process was asked to stop (SIGTERM); raised from the signal handler to unwind cleanly."""

    exit_code = 143
    kind = "terminated"


class ConfigError(PsiError):
    """The task config or the engine contract is invalid; the message names the field."""

    exit_code = 2
    kind = "invalid config"


class InputError(PsiError):
    """This party's input table cannot be used as configured (missing key column, duplicate keys...)."""

    exit_code = 3
    kind = "input error"


class PeerError(PsiError):
    """Something about the other party's engine or the link to it."""

    exit_code = 4
    kind = "peer error"


class PeerUnreachable(PeerError):
    """The peer never answered (not started, wrong endpoint, no route)."""


class PeerLost(PeerError):
    """The peer answered at first and then stopped responding."""


class PeerAborted(PeerError):
    """The peer reported that it failed and gave up the task."""


class ProtocolMismatch(PeerError):
    """The peer runs a different task, configuration or protocol version, or sent malformed data."""
