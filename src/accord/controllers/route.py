"""RouteController: the route handshake and periodic health probe, recorded in DomainRoute.status.

For every DomainRoute whose source is this domain, `reconcile(name)` performs the handshake over the
public port along the route (direct, or end to end through the transit hop; see
`accord.gateway.handshake`) and records the outcome:

    Ready          both sides hold the pinned keys and agree on a protocol version
    Unreachable    cannot connect / timeout / the transit hop refused / not an Accord port   (+ reason)
    Unauthorized   the peer's certificate is not the pinned one, the peer refused ours (it has no
                   Domain for us, or pins another certificate), or no common protocol version (+ reason)

**Periodic health.**  A reconcile ends with `Outcome.retry(probe_interval)` (a route that is not Ready:
after `UNREADY_RETRY_SECONDS`, or the interval if shorter, so a partner that adds our Domain a moment
after we added the route is found at once, not a whole interval later): the work queue keeps one
worker per route that probes again after the interval, so a route flips Ready -> Unreachable when the
peer goes away and back to Ready when it returns, with no separate timer.  Any change of the route
(or of a Domain it depends on: the destination's or the transit hop's, see `related`) wakes the worker
at once, so `accord route add` is followed by an immediate handshake and a replaced certificate shows
as Unauthorized within one watch round trip.

**Writes.**  Status is written (compare-and-swap on `resource_version`) only when phase, reason or peer
version change, or when `last_probe_at` is older than `status_refresh`: a healthy route costs one store
write a minute, not one per probe.  A concurrent write (the user edited the route) is a `Conflict`; the
reconcile then runs again at once on the fresh object.

**Token routes** (authentication_type Token, for peers behind a TLS-terminating L7 gateway): the first
reconcile agrees a route token (`accord.gateway.tokens`); later probes check it with a token-signed
request, and a new revision is agreed whenever the newest is older than `token_rotation_seconds` (or the
peer no longer knows it).  Tokens are stored in the route's status sealed to this node's own key, two
revisions at a time, so the gateway signs with the newest while the previous one stays valid at the peer.

Probes use a fresh link each time, never the gateway's pool, so they test what a new connection would
meet.  The controller reads pins and routes from the store at each probe (`RoutingTable.load`), so it
needs no running gateway and never disagrees with the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from accord.controllers.queue import Outcome
from accord.errors import AccordError, Conflict, NotFound
from accord.gateway.handshake import ProbeResult, probe
from accord.gateway.links import PeerConnector
from accord.gateway.table import RoutingTable
from accord.gateway.tls import Identity
from accord.gateway.tokens import TokenBook, merged, seal
from accord.resources.domain import Domain, DomainRoute
from accord.resources.meta import utcnow
from accord.resources.phases import RoutePhase
from accord.settings import NodeSettings
from accord.store.base import Store, WatchEvent

log = logging.getLogger(__name__)


UNREADY_RETRY_SECONDS = 2.0
"""How soon a route that is not Ready is probed again (a peer that is down costs one refused connect)."""


class RouteController:
    """See the module docstring.  `kind` and `reconcile` are the ControllerManager contract."""

    kind = DomainRoute.KIND

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        *,
        key_pem: bytes,
        cert_pem: bytes,
        probe_interval: float = 15.0,
        probe_timeout: float = 10.0,
        status_refresh: float = 60.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.me = settings.domain
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.status_refresh = timedelta(seconds=status_refresh)
        self.table = RoutingTable(self.me)
        self.connector = PeerConnector(
            self.table,
            Identity(key_pem, cert_pem),
            connect_timeout=min(probe_timeout, 10.0),
            handshake_timeout=min(probe_timeout, 10.0),
        )
        self.cert_pem = cert_pem
        self.tokens = TokenBook(key_pem)
        self._rotate_now: set[str] = set()  # token routes whose peer forgot our token
        self._depends: dict[str, set[str]] = {}  # route name -> domains it depends on
        self.related = {Domain.KIND: self._routes_of_domain}

    def _routes_of_domain(self, event: WatchEvent) -> Iterable[str]:
        return [name for name, domains in self._depends.items() if event.name in domains]

    async def reconcile(self, name: str) -> Outcome:
        try:
            route = await self.store.get(DomainRoute.KIND, name)
        except NotFound:
            self._depends.pop(name, None)
            return Outcome.done()
        assert isinstance(route, DomainRoute)
        if route.spec.source != self.me:
            self._depends.pop(name, None)
            return Outcome.done()  # a route of another domain (e.g. a mirrored record): not ours to probe
        self._depends[name] = {route.spec.destination} | (
            {route.spec.transit} if route.spec.transit else set()
        )
        await self.table.load(self.store)
        chosen = self.table.route(route.spec.destination)
        if chosen is not None and chosen.meta.name != name:
            result = ProbeResult(
                RoutePhase.PENDING,
                f"not used: route {chosen.meta.name} also leads to {route.spec.destination} "
                "and takes precedence",
            )
        else:
            tokens, rotate = self._token_state(route)
            result = await probe(
                self.connector,
                route.spec.destination,
                timeout=self.probe_timeout,
                tokens=tokens,
                rotate=rotate,
            )
            if result.token_unknown and name not in self._rotate_now:
                self._rotate_now.add(name)
                return Outcome.retry(0.0, "peer forgot our token; agreeing a new one")
            if result.phase is RoutePhase.READY:
                self._rotate_now.discard(name)
        try:
            await self._record(route, result)
        except Conflict:
            return Outcome.retry(0.0, "route changed while probing")
        except NotFound:
            self._depends.pop(name, None)
            return Outcome.done()
        if result.phase is RoutePhase.READY:
            return Outcome.retry(self.probe_interval)
        return Outcome.retry(min(self.probe_interval, UNREADY_RETRY_SECONDS))

    def _token_state(self, route: DomainRoute) -> tuple[list[tuple[int, bytes]], bool]:
        """(current tokens, whether to agree a new one now) for a token route; ([], False) otherwise."""
        if route.spec.authentication_type != "Token":
            return [], False
        try:
            tokens = self.tokens.tokens(route, route.spec.destination)
        except AccordError as exc:  # a token sealed to another key (the node's key was replaced)
            log.warning(
                "route %s: stored tokens unusable (%s); agreeing a new one", route.meta.name, exc.message
            )
            return [], True
        newest = max(route.status.tokens, key=lambda t: t.revision, default=None)
        due = newest is None or (newest.expires_at is not None and utcnow() >= newest.expires_at)
        return tokens, due or route.meta.name in self._rotate_now

    async def probe_once(self, name: str) -> ProbeResult:
        """Probe one route now without recording anything (diagnostics: `accord route check`)."""
        route = await self.store.get(DomainRoute.KIND, name)
        assert isinstance(route, DomainRoute)
        await self.table.load(self.store)
        return await probe(self.connector, route.spec.destination, timeout=self.probe_timeout)

    async def _record(self, route: DomainRoute, result: ProbeResult) -> None:
        status = route.status
        now = utcnow()
        changed = (status.phase, status.reason, status.peer_version) != (
            result.phase,
            result.reason,
            result.peer_version or status.peer_version,
        )
        stale = status.last_probe_at is None or now - status.last_probe_at >= self.status_refresh
        if not changed and not stale and not result.token:
            return
        if changed:
            level = logging.INFO if result.phase is RoutePhase.READY else logging.WARNING
            log.log(
                level,
                "route %s -> %s: %s (%s)",
                route.meta.name,
                route.spec.destination,
                result.phase,
                result.reason,
            )
        update = {
            "phase": result.phase,
            "reason": result.reason,
            "last_probe_at": now,
            "peer_version": result.peer_version or status.peer_version,
        }
        if result.phase is RoutePhase.READY:
            update["last_ready_at"] = now
        if result.token:
            ttl = float(route.spec.token_rotation_seconds or 86400 * 365)
            update["tokens"] = merged(
                status.tokens, result.token_revision, seal(self.cert_pem, result.token), ttl
            )
        await self.store.update(route.model_copy(update={"status": status.model_copy(update=update)}))
