"""AccordClient: the Python SDK over a node's local HTTP API (synchronous, httpx).

The client mirrors the API one method per route and returns the API's JSON bodies (`dict`): an object
for get/create/replace/delete, `{"items", "revision"}` for list, the shape `accord get -o json` shows,
so scripts can use what they see.  Parse one with
`accord.resources.parse_resource` when a typed model is wanted.

Errors come back typed: a `{code, message}` body is rebuilt into the same AccordError subclass the
node raised (`accord.errors.from_wire`), so `except NotFound:` works across the wire.  Transport
failures are wrapped at this boundary (httpx's exceptions never leak; httpx's own
`map_httpcore_exceptions` is the model): connection refused becomes `Unavailable` saying the node is
not running and how to start it; a timeout or a dropped connection becomes `Unavailable` too (both
retryable).

Finding the node: `from_node_dir` takes the API address the running node published in
`<dir>/run/endpoints.json` (the ports it actually bound, so `api_port = 0` works) and falls back to the
configured `api_host`/`api_port` when no live node published one (see `accord.node.endpoints`).

Streams (`watch`, `logs(follow=True)`) have no read timeout, only a connect timeout: a quiet watch is
normal.  Watch heartbeats are dropped unless asked for, and an in-band `ERROR` line is raised as its
typed error (e.g. `Gone` when `since` is older than the node's history: list again and watch from the
list's revision).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

import accord
from accord.errors import AccordError, ErrorCode, InvalidArgument, Unavailable, from_wire
from accord.node.endpoints import local_url, read_live
from accord.resources.kuscia import KIND_MAP, is_kuscia_document
from accord.settings import load_settings

DEFAULT_TIMEOUT_SECONDS = 30.0


def _error_from_response(response: httpx.Response) -> AccordError:
    """The typed error a node's error response stands for."""
    try:
        body = response.json()
        return from_wire(int(body["code"]), str(body["message"]), response.status_code)
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:300] or response.reason_phrase
        return from_wire(int(ErrorCode.UNKNOWN), f"HTTP {response.status_code}: {text}", response.status_code)


class AccordClient:
    """`AccordClient.from_node_dir("~/alice").list("jobs")`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        *,
        node_dir: Path | str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._node_dir = str(node_dir) if node_dir is not None else "DIR"
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Token": token, "User-Agent": f"accord-client/{accord.__version__}"},
            timeout=timeout,
        )

    @classmethod
    def from_node_dir(cls, directory: Path | str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> AccordClient:
        """A client for the node whose directory (config + token) is `directory`: at the address the running
        node published, else at the configured one."""
        settings = load_settings(directory)
        try:
            token = settings.token_path.read_text().strip()
        except FileNotFoundError as exc:
            raise InvalidArgument(
                f"{settings.token_path} is missing: run `accord node init --dir {settings.dir}` first"
            ) from exc
        running = read_live(settings)
        url = running.api_url if running is not None else local_url(settings.api_host, settings.api_port)
        return cls(url, token, timeout, node_dir=settings.dir)

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AccordClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- node -------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def node_info(self) -> dict[str, Any]:
        return self._json("GET", "/v1/node")

    def audit_verify(self) -> dict[str, Any]:
        return self._json("GET", "/v1/audit/verify")

    # -- resources --------------------------------------------------------------------------------

    def apply(self, text: str | bytes) -> list[dict[str, Any]]:
        """Apply a YAML/JSON stream; one `{kind, name, action}` per document."""
        content = text.encode() if isinstance(text, str) else text
        body = self._json("POST", "/v1/apply", content=content, headers={"Content-Type": "application/yaml"})
        results: list[dict[str, Any]] = body["results"]
        return results

    def create(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("POST", f"/v1/resources/{self._kind_of(doc)}", json=dict(doc))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/resources/{kind}/{name}")

    def list(self, kind: str, selector: str | None = None, domain: str | None = None) -> dict[str, Any]:
        """`{"items": [...], "revision": n}`; the revision is read before listing, so watching from it
        misses nothing."""
        params = {k: v for k, v in (("selector", selector), ("domain", domain)) if v}
        return self._json("GET", f"/v1/resources/{kind}", params=params)

    def replace(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Replace an object; `meta.resource_version` must be the one you read (compare-and-swap)."""
        meta = doc.get("meta") or {}
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if not name:
            raise InvalidArgument("the document has no meta.name")
        return self._json("PUT", f"/v1/resources/{self._kind_of(doc)}/{name}", json=dict(doc))

    def delete(self, kind: str, name: str, resource_version: int | None = None) -> dict[str, Any]:
        params = {"resource_version": resource_version} if resource_version is not None else {}
        return self._json("DELETE", f"/v1/resources/{kind}/{name}", params=params)

    # -- streams ----------------------------------------------------------------------------------

    def watch(
        self, kind: str, since: int = 0, selector: str | None = None, *, heartbeats: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Change events after revision `since`, then live, until the caller stops iterating."""
        params: dict[str, Any] = {"since": since}
        if selector:
            params["selector"] = selector
        for line in self._stream_lines(f"/v1/watch/{kind}", params):
            if not line.strip():
                continue
            event: dict[str, Any] = json.loads(line)
            kind_of_event = event.get("type")
            if kind_of_event == "HEARTBEAT" and not heartbeats:
                continue
            if kind_of_event == "ERROR":
                status = event.get("http_status")
                raise from_wire(
                    int(event.get("code", ErrorCode.UNKNOWN)),
                    str(event.get("message", "watch failed")),
                    int(status) if status is not None else None,
                )
            yield event

    def logs(self, task: str, follow: bool = False) -> Iterator[str]:
        """A task's engine log in chunks; with `follow`, until the task ends."""
        with self._open_stream(f"/v1/tasks/{task}/logs", {"follow": "true" if follow else "false"}) as resp:
            try:
                yield from resp.iter_text()
            except httpx.TransportError as exc:
                raise self._transport_error(exc) from exc

    # -- internals --------------------------------------------------------------------------------

    @staticmethod
    def _kind_of(doc: Mapping[str, Any]) -> str:
        kind = doc.get("kind")
        if not kind:
            raise InvalidArgument("the document has no 'kind'", code=ErrorCode.MALFORMED_DOCUMENT)
        if is_kuscia_document(dict(doc)):
            return KIND_MAP.get(str(kind), str(kind))
        return str(kind)

    def _transport_error(self, exc: httpx.TransportError) -> Unavailable:
        if isinstance(exc, httpx.ConnectError):
            return Unavailable(
                f"the node at {self.base_url} is not running (start it with "
                f"`accord node start --dir {self._node_dir}`)",
                code=ErrorCode.PEER_UNREACHABLE,
            )
        if isinstance(exc, httpx.TimeoutException):
            return Unavailable(
                f"the node at {self.base_url} did not answer within {self.timeout:g} s",
                code=ErrorCode.PEER_UNREACHABLE,
            )
        return Unavailable(
            f"lost the connection to the node at {self.base_url}: {exc}", code=ErrorCode.PEER_UNREACHABLE
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise AccordError(
                f"the node at {self.base_url} answered {method} {path} with something that is not JSON"
            ) from exc
        return body

    def _open_stream(self, path: str, params: Mapping[str, Any]) -> _Stream:
        return _Stream(self, path, params)

    def _stream_lines(self, path: str, params: Mapping[str, Any]) -> Iterator[str]:
        with self._open_stream(path, params) as resp:
            try:
                yield from resp.iter_lines()
            except httpx.TransportError as exc:
                raise self._transport_error(exc) from exc


class _Stream:
    """Context manager for a streamed GET: no read timeout, errors typed before the body is read."""

    def __init__(self, client: AccordClient, path: str, params: Mapping[str, Any]) -> None:
        self._client = client
        self._path = path
        self._params = dict(params)
        self._response: httpx.Response | None = None

    def __enter__(self) -> httpx.Response:
        client = self._client
        timeout = httpx.Timeout(client.timeout, read=None)
        request = client._http.build_request("GET", self._path, params=self._params, timeout=timeout)
        try:
            response = client._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise client._transport_error(exc) from exc
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            raise _error_from_response(response)
        self._response = response
        return response

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._response is not None:
            self._response.close()
