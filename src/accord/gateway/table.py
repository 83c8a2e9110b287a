"""RoutingTable: the gateway's view of its peers (pinned certificates) and routes, kept live from the store.

The gateway never reads the store on the request path: it follows the store (list, then watch from the
revision read *before* the list, so a racing change is seen twice rather than never; `Gone` -> list
again) and keeps two maps in memory:

- **peers**: partner `Domain` objects with a certificate -> `Peer(name, cert_pem, fingerprint)`, and the
  reverse map fingerprint -> domain that names the source of every inbound connection.  A partner
  Domain *is* the authorisation to use our public port (as Kuscia's partner Domain plus its route
  authorisation): deleting it, or replacing its certificate, refuses that domain from then on.
- **routes**: `DomainRoute` objects whose source is this domain, by destination.  A route says how to
  reach a peer: endpoint, optional transit domain, path prefix.

Listeners learn which domains changed, split in two sets so the gateway reacts proportionately:
`pins` (a peer's Domain added, removed or its certificate replaced: close every connection with that
peer, inbound, outbound and transit) and `routes` (a route's *spec* changed or it was deleted: close
pooled outbound links to that destination).  Status-only writes (the route prober records Ready every
few seconds) change neither set, so they never disturb traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from accord.errors import Gone, InvalidArgument
from accord.gateway.refusals import PeerUnauthorized, UnknownRoute
from accord.kms.identity import fingerprint
from accord.resources.domain import Domain, DomainRoute
from accord.resources.meta import AnyResource
from accord.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

DEFAULT_PORT = 8443


@dataclass(frozen=True)
class Peer:
    name: str
    cert_pem: str
    fingerprint: str


@dataclass(frozen=True)
class Hop:
    """How to reach one domain directly: where to dial and which certificate must answer."""

    domain: str
    host: str
    port: int
    fingerprint: str
    path_prefix: str = ""


@dataclass(frozen=True)
class RoutePlan:
    """How to reach a destination: `first` is dialled; `final` is reached through it when transit."""

    destination: str
    route_name: str
    first: Hop
    final: Hop | None = None
    path_prefix: str = ""
    token: bool = False  # authentication_type Token: no client certificate, signed requests

    @property
    def transit(self) -> str:
        return self.first.domain if self.final is not None else ""


@dataclass
class Changes:
    pins: set[str] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.pins or self.routes)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """`https://HOST:PORT` (or `HOST:PORT`, `[v6]:PORT`) -> (host, port)."""
    text = endpoint.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme != "https":
        raise InvalidArgument(f"endpoint {endpoint!r}: only https:// endpoints are supported")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise InvalidArgument(f"endpoint {endpoint!r}: {exc}") from exc
    if not parts.hostname:
        raise InvalidArgument(f"endpoint {endpoint!r} has no host")
    return parts.hostname, port


def normalise_prefix(prefix: str) -> str:
    prefix = prefix.strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return prefix


class RoutingTable:
    """See the module docstring."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._peers: dict[str, Peer] = {}
        self._by_fingerprint: dict[str, str] = {}
        self._route_objects: dict[str, DomainRoute] = {}
        self._routes: dict[str, DomainRoute] = {}
        self._inbound: dict[str, DomainRoute] = {}
        self._listeners: list[Callable[[Changes], None]] = []
        self.pins_version = 0
        self.loaded = asyncio.Event()

    # -- queries ----------------------------------------------------------------------------------

    def identify(self, fp: str | None) -> str | None:
        """The peer domain whose pinned certificate has fingerprint `fp`."""
        return self._by_fingerprint.get(fp) if fp else None

    def peer(self, name: str) -> Peer | None:
        return self._peers.get(name)

    def peers(self) -> list[Peer]:
        return sorted(self._peers.values(), key=lambda p: p.name)

    def pinned_pems(self) -> list[str]:
        return [p.cert_pem for p in self.peers()]

    def route(self, destination: str) -> DomainRoute | None:
        return self._routes.get(destination)

    def routes(self) -> list[DomainRoute]:
        return [self._routes[d] for d in sorted(self._routes)]

    def inbound_route(self, source: str) -> DomainRoute | None:
        """The route `source -> me` stored here (it holds inbound token state)."""
        return self._inbound.get(source)

    def token_sources(self) -> set[str]:
        """Pinned peers allowed to authenticate by token (an inbound route with authentication Token)."""
        return {
            source
            for source, route in self._inbound.items()
            if route.spec.authentication_type == "Token" and source in self._peers
        }

    def hop(self, domain: str) -> Hop:
        """The direct hop to `domain` (its route must not itself be a transit route)."""
        route = self._routes.get(domain)
        if route is None:
            raise UnknownRoute(
                f"no route from {self.me} to {domain}; create one with "
                f"`accord route add --to {domain} --endpoint https://HOST:PORT`"
            )
        if route.spec.transit:
            raise UnknownRoute(
                f"route {route.meta.name} to {domain} goes through {route.spec.transit}; a transit hop "
                "must be reachable directly"
            )
        return self._direct(route)

    def plan(self, destination: str) -> RoutePlan:
        """How to reach `destination`, or the refusal saying why it cannot be reached."""
        route = self._routes.get(destination)
        if route is None:
            raise UnknownRoute(
                f"no route from {self.me} to {destination}; create one with "
                f"`accord route add --to {destination} --endpoint https://HOST:PORT`"
            )
        prefix = normalise_prefix(route.spec.path_prefix)
        token = route.spec.authentication_type == "Token"
        if token and route.spec.transit:
            raise UnknownRoute(
                f"route {route.meta.name}: token authentication cannot go through a transit hop "
                "(transit needs end-to-end mutual TLS)"
            )
        if not route.spec.transit:
            return RoutePlan(destination, route.meta.name, self._direct(route), None, prefix, token)
        first = self.hop(route.spec.transit)
        final = Hop(destination, "", 0, self._pin(destination), prefix)
        return RoutePlan(destination, route.meta.name, first, final, prefix)

    def _direct(self, route: DomainRoute) -> Hop:
        destination = route.spec.destination
        try:
            host, port = parse_endpoint(route.spec.endpoint)
        except InvalidArgument as exc:
            raise UnknownRoute(f"route {route.meta.name}: {exc.message}") from exc
        return Hop(destination, host, port, self._pin(destination), normalise_prefix(route.spec.path_prefix))

    def _pin(self, domain: str) -> str:
        peer = self._peers.get(domain)
        if peer is None:
            raise PeerUnauthorized(
                f"no certificate pinned for domain {domain}; add it with "
                f"`accord domain add {domain} --cert {domain}.crt`"
            )
        return peer.fingerprint

    # -- updates ----------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Changes], None]) -> None:
        self._listeners.append(listener)

    def replace(self, objects: Iterable[AnyResource]) -> Changes:
        """Load a full listing of Domain and DomainRoute objects (what the store holds now)."""
        old_peers, old_routes = dict(self._peers), dict(self._routes)
        old_token_sources = self.token_sources()
        self._peers.clear()
        self._route_objects.clear()
        self._inbound.clear()
        for obj in objects:
            self._put(obj)
        return self._finish(old_peers, old_routes, old_token_sources)

    def apply(self, event: WatchEvent) -> Changes:
        """Apply one watch event (ignores other kinds)."""
        if event.kind not in (Domain.KIND, DomainRoute.KIND):
            return Changes()
        old_peers, old_routes = dict(self._peers), dict(self._routes)
        old_token_sources = self.token_sources()
        obj = event.resource()
        if event.type == "DELETED":
            if isinstance(obj, Domain):
                self._peers.pop(obj.meta.name, None)
            elif isinstance(obj, DomainRoute):
                self._route_objects.pop(obj.meta.name, None)
                current = self._inbound.get(obj.spec.source)
                if current is not None and current.meta.name == obj.meta.name:
                    del self._inbound[obj.spec.source]
        else:
            self._put(obj)
        return self._finish(old_peers, old_routes, old_token_sources)

    def _put(self, obj: AnyResource) -> None:
        if isinstance(obj, Domain):
            name = obj.meta.name
            if name == self.me or obj.spec.role != "partner" or not obj.spec.cert.strip():
                self._peers.pop(name, None)
                return
            try:
                fp = fingerprint(obj.spec.cert)
            except InvalidArgument as exc:
                log.warning("Domain %s: certificate unusable, peer not pinned: %s", name, exc.message)
                self._peers.pop(name, None)
                return
            self._peers[name] = Peer(name, obj.spec.cert, fp)
        elif isinstance(obj, DomainRoute):
            if obj.spec.source == self.me:
                self._route_objects[obj.meta.name] = obj
            else:
                self._route_objects.pop(obj.meta.name, None)
                if obj.spec.destination == self.me:
                    self._inbound[obj.spec.source] = obj

    def _select_routes(self) -> None:
        """One route per destination: the first by name when several lead to the same domain."""
        self._routes.clear()
        for name in sorted(self._route_objects):
            route = self._route_objects[name]
            chosen = self._routes.setdefault(route.spec.destination, route)
            if chosen is not route:
                log.warning(
                    "routes %s and %s both lead to %s; using %s",
                    chosen.meta.name,
                    name,
                    route.spec.destination,
                    chosen.meta.name,
                )

    def _finish(
        self, old_peers: dict[str, Peer], old_routes: dict[str, DomainRoute], old_token_sources: set[str]
    ) -> Changes:
        self._select_routes()
        self._by_fingerprint = {peer.fingerprint: peer.name for peer in self._peers.values()}
        changes = Changes()
        for name in old_peers.keys() | self._peers.keys():
            if old_peers.get(name) != self._peers.get(name):
                changes.pins.add(name)
        for dest in old_routes.keys() | self._routes.keys():
            before, after = old_routes.get(dest), self._routes.get(dest)
            if (before.spec if before else None) != (after.spec if after else None):
                changes.routes.add(dest)
        # a change of a transit hop changes every route through it
        for route in self._routes.values():
            if route.spec.transit and route.spec.transit in (changes.pins | changes.routes):
                changes.routes.add(route.spec.destination)
        if changes.pins or old_token_sources != self.token_sources():
            self.pins_version += 1  # the server context depends on both
        if changes:
            log.info(
                "routing table: pins changed %s, routes changed %s",
                sorted(changes.pins),
                sorted(changes.routes),
            )
            for listener in list(self._listeners):
                try:
                    listener(changes)
                except Exception:
                    log.exception("routing table listener failed")
        return changes

    async def load(self, store: Store) -> int:
        """List Domains and DomainRoutes now; returns the revision to watch from."""
        revision = await store.revision()
        objects = [*await store.list(Domain.KIND), *await store.list(DomainRoute.KIND)]
        self.replace(objects)
        return revision

    async def follow(self, store: Store, *, retry_delay: float = 1.0) -> None:
        """Keep the table current until cancelled (list, watch, relist on `Gone`, retry on errors)."""
        while True:
            try:
                revision = await self.load(store)
                self.loaded.set()
                async for event in store.watch(None, since=revision):
                    self.apply(event)
                return  # the store was closed
            except Gone:
                log.info("routing table watch expired; listing again")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the store failed; retrying in %.1f s", retry_delay)
                await asyncio.sleep(retry_delay)
