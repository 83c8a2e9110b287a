"""Forwarding one HTTP exchange over an upstream link, and splicing two byte streams.

`relay` is the heart of both ports: it writes the (already validated and rewritten) request head to the
upstream, streams the request body in a task of its own while it reads the response, and streams the
response back.  Running the two directions concurrently is what lets a long-lived response (a
long-poll, a server push) and a streaming upload coexist, and lets an upstream answer early (a refusal,
a 413) without waiting for a body it will never read.

Connection reuse is decided here, conservatively:
- the client connection stays open only if the request said keep-alive, its body was read to the end,
  and the response had a self-delimiting body;
- the upstream link goes back to the pool only if, in addition, the upstream said keep-alive and the
  request body was written to the end.
Anything else closes the connection: a half-read message must never be followed by another one on the
same connection (that is how desynchronisation starts).

Errors: before any response byte reached the client, a failure becomes a typed refusal the caller
renders as an HTTP answer (400 for a malformed request body, 502 for a broken upstream).  After that,
the only honest signal is to abort the client connection, so a truncated response is never mistaken for
a complete one.

`splice` joins two streams after a 101 / CONNECT: bytes are copied both ways until both ends finish.
A half-close (EOF one way) is passed on where the other side is plain TCP; TLS transports in asyncio
cannot half-close, so over a TLS leg an EOF in one direction closes the tunnel once the other side has
nothing more in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from accord.gateway.http1 import (
    MAX_HEAD_BYTES,
    Framing,
    RequestHead,
    ResponseHead,
    copy_body,
    framing_fields,
    parse_response_head,
    serialize_head,
)
from accord.gateway.links import LinkPool, Opener, UpstreamClosedEarly
from accord.gateway.refusals import BadRequest, GatewayError, PeerUnreachable, UpstreamProtocolError
from accord.gateway.stream import READ_SIZE, Stream, StreamClosed
from accord.gateway.tracking import ConnectionTracker

log = logging.getLogger(__name__)


class ResponseStarted(Exception):
    """The exchange failed after the response head was sent: the client connection must be aborted."""


@dataclass(slots=True)
class RelayResult:
    client_keep_alive: bool
    upstream_reusable: bool
    status: int
    upgraded: bool = False


def request_head_bytes(
    req: RequestHead,
    *,
    target: bytes | None = None,
    drop: frozenset[bytes] = frozenset(),
    extra: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """The request head as forwarded: hop-by-hop fields removed, framing and upgrade re-announced."""
    fields = req.headers.forwardable(drop)
    fields += framing_fields(req.framing, req.length)
    if req.upgrade is not None:
        fields += [(b"Connection", b"upgrade"), (b"Upgrade", req.upgrade)]
    if extra:
        fields += extra
    return serialize_head(b"%s %s HTTP/1.1" % (req.method, target or req.target), fields)


def response_head_bytes(resp: ResponseHead, *, close: bool) -> bytes:
    fields = resp.headers.forwardable()
    fields += framing_fields(resp.framing, resp.length)
    if resp.status == 101:
        upgrade = resp.headers.get(b"upgrade")
        fields += [(b"Connection", b"upgrade")] + ([(b"Upgrade", upgrade)] if upgrade else [])
    elif close:
        fields.append((b"Connection", b"close"))
    return serialize_head(b"HTTP/1.1 %d %s" % (resp.status, resp.reason), fields)


async def send_refusal(client: Stream, req: RequestHead, error: GatewayError, refused_by: str) -> bool:
    """Answer `req` with `error`; whether the client connection may carry another request.

    A refused request's body is never read, so a request with a body closes the connection.
    """
    close = req.has_body or not req.keep_alive
    try:
        client.write(error.response(refused_by, close=close))
        await client.drain()
    except OSError:
        return False
    return not close


async def relay(client: Stream, req: RequestHead, head: bytes, upstream: Stream) -> RelayResult:
    """One exchange: `head` (the rewritten request head) and the body to `upstream`, the response back."""
    upstream.write(head)
    body_task: asyncio.Task[None] | None = None
    if req.has_body:
        body_task = asyncio.create_task(_send_body(client, upstream, req))
    else:
        try:
            await upstream.drain()
        except OSError as exc:
            raise UpstreamClosedEarly(f"{upstream.label} closed the link: {exc}") from exc
    try:
        resp = await _read_final_response(client, req, upstream, body_task)
        close_client = not req.keep_alive or resp.framing is Framing.UNTIL_CLOSE
        if resp.framing is Framing.TUNNEL:
            if req.upgrade is None and req.method != b"CONNECT":
                raise UpstreamProtocolError(f"{upstream.label} switched protocols without being asked")
            if body_task is not None:
                await body_task
            client.write(response_head_bytes(resp, close=False))
            await client.drain()
            await splice(client, upstream)
            return RelayResult(False, False, resp.status, upgraded=True)
        if body_task is not None and not body_task.done():
            close_client = True  # the upstream answered before the request body ended
        client.write(response_head_bytes(resp, close=close_client))
        try:
            await copy_body(upstream, client, resp.framing, resp.length, UpstreamProtocolError)
            await client.drain()
        except (OSError, GatewayError, StreamClosed) as exc:
            raise ResponseStarted(f"response from {upstream.label} broken off: {exc}") from exc
        body_done = await _finish_body(body_task)
        return RelayResult(
            client_keep_alive=not close_client and body_done,
            upstream_reusable=resp.keep_alive and body_done,
            status=resp.status,
        )
    finally:
        if body_task is not None:
            if not body_task.done():
                body_task.cancel()
            with contextlib.suppress(BaseException):
                await body_task  # also marks a failure as retrieved


async def _finish_body(task: asyncio.Task[None] | None) -> bool:
    """True if the request body was forwarded completely (waiting briefly for its last write)."""
    if task is None:
        return True
    if not task.done():
        await asyncio.wait({task}, timeout=1.0)
    if not task.done():
        task.cancel()
        return False
    return not task.cancelled() and task.exception() is None


async def _send_body(client: Stream, upstream: Stream, req: RequestHead) -> None:
    try:
        await copy_body(client, upstream, req.framing, req.length, BadRequest)
        await upstream.drain()
    except BaseException:
        # the request is broken (bad framing, client gone): the upstream must not see a complete
        # message, and the response reader must wake up
        upstream.abort()
        raise


async def _read_final_response(
    client: Stream, req: RequestHead, upstream: Stream, body_task: asyncio.Task[None] | None
) -> ResponseHead:
    received_any = False
    while True:
        try:
            raw = await upstream.read_head(MAX_HEAD_BYTES)
        except (OSError, StreamClosed) as exc:
            raise _explain(body_task, upstream, received_any, exc) from exc
        if raw is None:
            raise _explain(body_task, upstream, received_any, None)
        received_any = True
        resp = parse_response_head(raw, req.method)
        if 100 <= resp.status < 200 and resp.status != 101:
            # interim answers (100 Continue, 103 Early Hints) go straight to the client
            client.write(serialize_head(b"HTTP/1.1 %d %s" % (resp.status, resp.reason), resp.headers.items))
            await client.drain()
            continue
        return resp


def _explain(
    body_task: asyncio.Task[None] | None, upstream: Stream, received_any: bool, exc: BaseException | None
) -> GatewayError:
    if body_task is not None and body_task.done() and not body_task.cancelled():
        failure = body_task.exception()
        if isinstance(failure, GatewayError):
            return failure  # e.g. BadRequest: the request body was malformed
        if failure is not None:
            return PeerUnreachable(f"request body could not be forwarded: {failure}")
    detail = f": {exc}" if exc else ""
    if not received_any:
        return UpstreamClosedEarly(f"{upstream.label} closed the link before answering{detail}")
    return PeerUnreachable(f"{upstream.label} broke off its answer{detail}")


async def forward_pooled(
    client: Stream,
    req: RequestHead,
    head: bytes,
    pool: LinkPool,
    key: Hashable,
    opener: Opener,
    *,
    tracker: ConnectionTracker,
    domains: Iterable[str] = (),
    services: Iterable[str] = (),
    classify: Callable[[BaseException], GatewayError] | None = None,
) -> bool:
    """`relay` over a pooled link of `key`; returns whether the client connection stays open.

    A reused link that turns out to be dead before answering (the peer closed it while idle) is
    replaced once by a fresh one, but only for a request without a body: nothing of the client's
    request was consumed, so sending it again is exactly what the client would do.  `classify` turns
    the failure of a *fresh* link into the most specific refusal (e.g. a TLS alert -> unauthorized).
    """
    for attempt in (1, 2):
        link, reused, generation = await pool.acquire(key, opener)
        try:
            with tracker.track(link, domains=domains, services=services):
                result = await relay(client, req, head, link)
        except UpstreamClosedEarly as exc:
            link.abort()
            if reused and not req.has_body and attempt == 1:
                log.debug("pooled link to %s was stale; retrying on a fresh one", link.label)
                continue
            if not reused and classify is not None:
                raise classify(exc) from exc
            raise
        except ResponseStarted as exc:
            link.abort()
            client.abort()
            log.info("%s", exc)
            return False
        except BaseException:
            link.abort()
            raise
        if result.upstream_reusable:
            pool.release(key, link, generation)
        else:
            link.abort()
        return result.client_keep_alive
    raise AssertionError("unreachable")  # pragma: no cover


async def splice(a: Stream, b: Stream) -> tuple[int, int]:
    """Copy bytes both ways until both directions end; returns (bytes a->b, bytes b->a)."""
    counts = [0, 0]

    async def pump(src: Stream, dst: Stream, index: int) -> None:
        writer = dst.writer
        if src.buf:
            counts[index] += len(src.buf)
            writer.write(bytes(src.buf))
            src.buf.clear()
        read = src.reader.read
        while True:
            data = await read(READ_SIZE)
            if not data:
                break
            counts[index] += len(data)
            writer.write(data)
            await writer.drain()
        await writer.drain()

    forward = asyncio.create_task(pump(a, b, 0))
    backward = asyncio.create_task(pump(b, a, 1))
    tasks = {forward, backward}
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        if first.exception() is None and pending:
            dst = b if first is forward else a
            if dst.writer.can_write_eof():
                with contextlib.suppress(OSError):
                    dst.writer.write_eof()
                await asyncio.wait(pending)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await asyncio.gather(a.close(), b.close())
    return counts[0], counts[1]
