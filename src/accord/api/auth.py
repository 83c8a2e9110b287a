"""Token authentication for the local API, as KusciaAPI does it: a shared secret in header `Token`.

Two different secrets use the same header:
- the **node token** (`<node dir>/token`, written by `accord node init`) guards every route a user or
  the CLI calls;
- a **task token** (one-time, handed to an engine when the runtime starts it) guards only
  `POST /v1/tasks/{name}/report`, and is checked by the task controller, which knows the tokens.

Comparison is constant-time (`hmac.compare_digest`) so the time a wrong guess takes says nothing about
how much of it was right.  Failures raise `Unauthenticated`, rendered by `api/errors.py` as
401 `{code: 11102}`.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Security
from fastapi.security import APIKeyHeader

from accord.errors import InvalidArgument, Unauthenticated

TOKEN_HEADER = "Token"

node_token_header = APIKeyHeader(
    name=TOKEN_HEADER,
    scheme_name="NodeToken",
    description="the node's API token (the file `token` in the node directory)",
    auto_error=False,
)
task_token_header = APIKeyHeader(
    name=TOKEN_HEADER,
    scheme_name="TaskToken",
    description="the one-time token the runtime gave the task's engine",
    auto_error=False,
)


def tokens_match(supplied: str, expected: str) -> bool:
    return hmac.compare_digest(supplied.encode(), expected.encode())


def require_node_token(token: str) -> Callable[[str | None], Awaitable[None]]:
    """A FastAPI dependency that lets a request through only with the node's token."""
    if not token:
        raise InvalidArgument("the node's API token is empty: run `accord node init` to create one")

    async def check_node_token(supplied: str | None = Security(node_token_header)) -> None:
        if not supplied:
            raise Unauthenticated(
                f"missing API token: send the node's token (the file `token` in the node directory) "
                f"in the '{TOKEN_HEADER}' header"
            )
        if not tokens_match(supplied, token):
            raise Unauthenticated(
                f"wrong API token in the '{TOKEN_HEADER}' header: use the token of this node's directory"
            )

    return check_node_token
