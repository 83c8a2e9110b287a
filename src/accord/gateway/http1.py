"""Strict HTTP/1.1 for the gateway: message heads, body framing, and body copying.

Everything an engine or a peer sends passes through here before a byte is forwarded, so this module is
where request smuggling is stopped.  The rule is *one reading of every message*: a message whose framing
two HTTP implementations could read differently is refused with 400, never forwarded "as is":

- a line that ends in a bare LF or contains a bare CR;
- obs-fold (a header line starting with space or tab);
- a header name that is not a token, or whitespace before the colon; control bytes in a value;
- both `Content-Length` and `Transfer-Encoding`; more than one `Transfer-Encoding` or any coding but
  `chunked`; a `Content-Length` that is not plain digits, or several that disagree; a comma list;
- a chunk size that is not 1-16 hex digits, a chunk not followed by exactly CRLF, a malformed trailer;
- a request version other than HTTP/1.1, a missing or repeated Host, a CONNECT with a body.

Why not h11 (the usual choice): h11 accepts obs-fold (it unfolds it), bare-LF line endings and a request
with both Content-Length and Transfer-Encoding (it lets chunked win, as RFC 9112 permits a *server* to
do, but a *proxy* that forwards such a message keeps the ambiguity alive downstream).  And a proxy must
not pay h11's per-event cost for the bytes of a 1 GiB body.  So heads are parsed here with anchored,
linear regular expressions, and bodies are copied raw: Content-Length bodies byte for byte, chunked bodies
re-framed chunk by chunk (the size line is re-written canonically and chunk extensions are dropped), so
what the next hop sees has exactly one reading whatever the sender meant.

Bodies are streamed, never buffered whole: `copy_body` forwards as it reads, so a long-lived response or
a multi-gigabyte upload costs a few hundred KiB of memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from accord.gateway.refusals import BadRequest, GatewayError, UpstreamProtocolError
from accord.gateway.stream import Stream

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_CHUNK_LINE = 1024
MAX_TRAILER_BYTES = 16 * 1024

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e]+) HTTP/1\.([01])")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
_FIELD = re.compile(rb"(" + _TCHAR + rb"+):([\t\x20-\x7e\x80-\xff]*)")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*)?")

# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection and are never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class Framing(Enum):
    """How the end of a message body is found."""

    NONE = "none"  # no body
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # chunked transfer coding
    UNTIL_CLOSE = "until-close"  # response body ends when the connection closes
    TUNNEL = "tunnel"  # 101 / 2xx CONNECT: the connection becomes a byte stream


class Headers:
    """Header fields in arrival order (names as sent) with a lower-case index."""

    __slots__ = ("index", "items")

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self.items = items
        self.index: dict[bytes, list[bytes]] = {}
        for name, value in items:
            self.index.setdefault(name.lower(), []).append(value)

    def get(self, name: bytes) -> bytes | None:
        values = self.index.get(name)
        return values[0] if values else None

    def first_values(self) -> dict[bytes, bytes]:
        return {name: values[0] for name, values in self.index.items()}

    def connection_tokens(self) -> set[bytes]:
        tokens: set[bytes] = set()
        for value in self.index.get(b"connection", []):
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
        return tokens

    def forwardable(self, drop: frozenset[bytes] | set[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
        """Fields minus hop-by-hop ones, minus those named in Connection, minus `drop` (lower-case)."""
        excluded = HOP_BY_HOP | self.connection_tokens() | drop
        return [(n, v) for n, v in self.items if n.lower() not in excluded]


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    minor: int  # HTTP/1.<minor>
    headers: Headers
    host: bytes
    framing: Framing
    length: int
    keep_alive: bool
    upgrade: bytes | None

    @property
    def has_body(self) -> bool:
        return self.framing is Framing.CHUNKED or (self.framing is Framing.LENGTH and self.length > 0)


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    minor: int
    headers: Headers
    framing: Framing
    length: int
    keep_alive: bool


def _fields(lines: list[bytes], error: type[GatewayError]) -> Headers:
    if len(lines) > MAX_HEADERS:
        raise error(f"more than {MAX_HEADERS} header fields")
    items: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise error("obsolete line folding (a header line starting with whitespace) is not accepted")
        m = _FIELD.fullmatch(line)
        if m is None:
            raise error(f"malformed header line {line[:60]!r}")
        items.append((m[1], m[2].strip(b" \t")))
    return Headers(items)


def _split_head(raw: bytes, error: type[GatewayError]) -> list[bytes]:
    if not raw.endswith(b"\r\n\r\n"):
        raise error("message head does not end with CRLF CRLF")
    lines = raw[:-4].split(b"\r\n")
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise error("bare CR or LF in the message head (lines must end with CRLF)")
    return lines


def _body_framing(headers: Headers, error: type[GatewayError], minor: int) -> tuple[Framing, int] | None:
    """Framing from Transfer-Encoding / Content-Length; None when the message declares neither."""
    te = headers.index.get(b"transfer-encoding")
    cl = headers.index.get(b"content-length")
    if te is not None:
        if cl is not None:
            raise error("both Content-Length and Transfer-Encoding are present (request smuggling vector)")
        if len(te) != 1 or te[0].strip().lower() != b"chunked":
            raise error("only a single 'Transfer-Encoding: chunked' is accepted")
        if minor == 0:
            raise error("Transfer-Encoding is not allowed in HTTP/1.0")
        return Framing.CHUNKED, 0
    if cl is not None:
        if len(set(cl)) != 1 or _DIGITS.fullmatch(cl[0]) is None:
            raise error(f"invalid Content-Length {b', '.join(cl)[:60]!r}")
        return Framing.LENGTH, int(cl[0])
    return None


def parse_request_head(raw: bytes) -> RequestHead:
    """A validated request head; `BadRequest` for anything not strictly HTTP/1.1."""
    lines = _split_head(raw, BadRequest)
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise BadRequest(f"malformed request line {lines[0][:80]!r}")
    method, target, minor = m[1], m[2], int(m[3])
    if minor != 1:
        # a 1.0 client cannot read the chunked responses a peer may send; engines all speak 1.1
        raise BadRequest("HTTP/1.0 is not supported here; send HTTP/1.1")
    headers = _fields(lines[1:], BadRequest)
    hosts = headers.index.get(b"host", [])
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if minor == 1 and not hosts:
        raise BadRequest("HTTP/1.1 request without a Host header")
    host = hosts[0] if hosts else b""
    if target.startswith((b"http://", b"https://")):
        # absolute-form (an engine configured with the gateway as its HTTP proxy): the authority wins
        rest = target.split(b"://", 1)[1]
        authority, slash, path = rest.partition(b"/")
        host, target = authority, slash + path or b"/"
    elif method == b"CONNECT":
        host = target
    elif not target.startswith(b"/") and not (target == b"*" and method == b"OPTIONS"):
        raise BadRequest(f"unsupported request target {target[:80]!r}")
    framing = _body_framing(headers, BadRequest, minor)
    if method == b"CONNECT" and framing is not None:
        raise BadRequest("a CONNECT request must not have a body")
    kind, length = framing or (Framing.NONE, 0)
    tokens = headers.connection_tokens()
    upgrade = headers.get(b"upgrade") if b"upgrade" in tokens else None
    return RequestHead(
        method=method,
        target=target,
        minor=minor,
        headers=headers,
        host=host,
        framing=kind,
        length=length,
        keep_alive=minor == 1 and b"close" not in tokens,
        upgrade=upgrade,
    )


def parse_response_head(raw: bytes, request_method: bytes) -> ResponseHead:
    """A validated response head to a request with `request_method`; `UpstreamProtocolError` otherwise."""
    lines = _split_head(raw, UpstreamProtocolError)
    m = _STATUS_LINE.fullmatch(lines[0])
    if m is None:
        raise UpstreamProtocolError(f"malformed status line {lines[0][:80]!r}")
    minor, status, reason = int(m[1]), int(m[2]), m[3] or b""
    headers = _fields(lines[1:], UpstreamProtocolError)
    tokens = headers.connection_tokens()
    if status == 101 or (request_method == b"CONNECT" and 200 <= status < 300):
        kind, length = Framing.TUNNEL, 0
    elif request_method == b"HEAD" or status < 200 or status in (204, 304):
        kind, length = Framing.NONE, 0
    else:
        kind, length = _body_framing(headers, UpstreamProtocolError, minor) or (Framing.UNTIL_CLOSE, 0)
    return ResponseHead(
        status=status,
        reason=reason,
        minor=minor,
        headers=headers,
        framing=kind,
        length=length,
        keep_alive=minor == 1 and b"close" not in tokens and kind is not Framing.UNTIL_CLOSE,
    )


def serialize_head(start_line: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    parts = [start_line, b"\r\n"]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def framing_fields(framing: Framing, length: int) -> list[tuple[bytes, bytes]]:
    """The header fields that announce a body framing to the next hop."""
    if framing is Framing.CHUNKED:
        return [(b"Transfer-Encoding", b"chunked")]
    if framing is Framing.LENGTH:
        return []  # Content-Length is end-to-end and forwarded as received
    return []


# -- bodies -----------------------------------------------------------------------------------------


async def copy_body(
    src: Stream, dst: Stream, framing: Framing, length: int, error: type[GatewayError]
) -> None:
    """Forward one message body from `src` to `dst` according to its framing, streaming."""
    if framing is Framing.LENGTH:
        if length:
            await src.copy_exact(dst, length)
    elif framing is Framing.CHUNKED:
        await copy_chunked(src, dst, error)
    elif framing is Framing.UNTIL_CLOSE:
        await src.copy_to_eof(dst)


async def copy_chunked(src: Stream, dst: Stream, error: type[GatewayError]) -> None:
    """Re-frame a chunked body: canonical size lines, extensions dropped, trailers validated."""
    writer = dst.writer
    while True:
        line = await _line(src, error)
        m = _CHUNK_SIZE.fullmatch(line)
        if m is None:
            raise error(f"invalid chunk size line {line[:40]!r}")
        size = int(m[1], 16)
        if size == 0:
            break
        writer.write(b"%x\r\n" % size)
        await src.copy_exact(dst, size)
        if await src.read_exact(2) != b"\r\n":
            raise error("chunk data not followed by CRLF")
        writer.write(b"\r\n")
    trailers: list[bytes] = []
    total = 0
    while True:
        line = await _line(src, error)
        if not line:
            break
        total += len(line) + 2
        if total > MAX_TRAILER_BYTES:
            raise error(f"trailer section longer than {MAX_TRAILER_BYTES} bytes")
        trailers.append(line)
    fields = _fields(trailers, error)
    writer.write(serialize_head(b"0", [(n, v) for n, v in fields.items if n.lower() not in HOP_BY_HOP]))
    await writer.drain()


async def _line(src: Stream, error: type[GatewayError]) -> bytes:
    try:
        return await src.read_line(MAX_CHUNK_LINE)
    except BadRequest as exc:
        raise error(exc.message) from None


def check_buffered_chunks(buffered: bytes | bytearray) -> None:
    """Validate the chunk framing already received, before the head is forwarded anywhere.

    A smuggling payload usually arrives in the same packets as the head; checking what is buffered means
    such a request is refused with 400 and nothing of it reaches an engine.  A framing error found later
    (bytes that arrive after forwarding began) aborts the upstream connection instead, so the engine sees
    a truncated request, never a second, smuggled one: bodies are re-framed, not passed through.
    """
    pos = 0
    data = bytes(buffered)
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            if len(data) - pos > MAX_CHUNK_LINE or b"\n" in data[pos:]:
                raise BadRequest("invalid chunk size line")
            return
        line = data[pos:end]
        m = _CHUNK_SIZE.fullmatch(line)
        if m is None or b"\n" in line or b"\r" in line:
            raise BadRequest(f"invalid chunk size line {line[:40]!r}")
        size = int(m[1], 16)
        if size == 0:
            return  # trailers are validated while copying
        data_end = end + 2 + size
        if len(data) < data_end + 2:
            return
        if data[data_end : data_end + 2] != b"\r\n":
            raise BadRequest("chunk data not followed by CRLF")
        pos = data_end + 2


async def read_body(src: Stream, req: RequestHead, limit: int) -> bytes:
    """A whole (small) request body in memory, refused beyond `limit` bytes (for messages, not streams)."""
    if req.framing is Framing.LENGTH:
        if req.length > limit:
            raise BadRequest(f"body of {req.length} bytes exceeds the {limit}-byte limit")
        return await src.read_exact(req.length) if req.length else b""
    if req.framing is not Framing.CHUNKED:
        return b""
    body = bytearray()
    while True:
        line = await src.read_line(MAX_CHUNK_LINE)
        m = _CHUNK_SIZE.fullmatch(line)
        if m is None:
            raise BadRequest(f"invalid chunk size line {line[:40]!r}")
        size = int(m[1], 16)
        if size == 0:
            break
        if len(body) + size > limit:
            raise BadRequest(f"body exceeds the {limit}-byte limit")
        body += await src.read_exact(size)
        if await src.read_exact(2) != b"\r\n":
            raise BadRequest("chunk data not followed by CRLF")
    total = 0
    while line := await src.read_line(MAX_CHUNK_LINE):  # trailers: validated, then dropped
        total += len(line)
        if total > MAX_TRAILER_BYTES:
            raise BadRequest("trailer section too long")
        _fields([line], BadRequest)
    return bytes(body)
