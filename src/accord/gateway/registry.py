"""ServiceRegistry: which local ports the public port may reach, for which peer domains, and until when.

The policy of the gateway in one table.  A running task registers the services it exposes to its peers
(`register("psi-1-spu", 40123, allowed={"bob"}, task="psi-1")`); when the task stops, the runtime
unregisters them (`unregister_task("psi-1")`) and from that moment the services are unknown: new
requests get 404, and the gateway closes tunnels and pooled connections to them (listeners are told).
The node registers its permanent control service `accord` with `allowed={ANY_PEER}`, i.e. every domain
whose certificate is pinned (the public port admits no one else).

Why in-process and not in the store: registrations follow process lifetimes (a task's engine), are
consulted on every request, and must vanish when the node restarts; the store holds what must survive.

Resolution order (and the refusal each step gives): service name unknown -> `UnknownService` (404);
source domain not in `allowed` -> `NotAllowed` (403).  The node's own domain (an engine calling a
service of its own node through the egress port) is always allowed.

**PTP sessions** (the BFIA transport, `ptp.py`) are registered the same way: a running task registers
its session id with the domains that are parties of it (`register_session("job1-psi", parties={"alice",
"bob"}, task="job1-psi")`); pushes and pops for a session nobody registered, or from a domain that is not
one of its parties, are refused, and unregistering the session (or its task) drops its queued messages.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from accord.errors import AlreadyExists, InvalidArgument
from accord.gateway.refusals import NotAllowed, UnknownService
from accord.names import check_dns_label

log = logging.getLogger(__name__)

ANY_PEER = "*"
"""In `allowed`: every domain whose certificate this node pins."""

RESERVED_SERVICES = frozenset({"handshake", "transit", "transport", "gateway"})
"""Hosts the gateway answers itself (`handshake.<domain>.svc`, `transit.<domain>.svc`, PTP `transport`)."""


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    port: int
    allowed: frozenset[str]
    task: str | None = None
    host: str = "127.0.0.1"

    def allows(self, source: str) -> bool:
        return ANY_PEER in self.allowed or source in self.allowed


SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True)
class SessionEntry:
    session: str
    parties: frozenset[str]
    task: str | None = None


class ServiceRegistry:
    """In-process registry of services reachable through the gateway; see the module docstring."""

    def __init__(self, domain: str = "") -> None:
        self._domain = domain
        self._services: dict[str, ServiceEntry] = {}
        self._listeners: list[Callable[[ServiceEntry], None]] = []
        self._sessions: dict[str, SessionEntry] = {}
        self._session_listeners: list[Callable[[SessionEntry], None]] = []

    def bind_domain(self, domain: str) -> None:
        """Set the node's own domain (always allowed); the Gateway calls this."""
        self._domain = domain

    def register(
        self, service: str, port: int, *, allowed: set[str], task: str | None = None
    ) -> ServiceEntry:
        """Expose local port `port` as `<service>.<domain>.svc` to the domains in `allowed`.

        Registering a name again replaces the entry if it belongs to the same task (or to no task);
        a name held by another task is `AlreadyExists`.
        """
        try:
            check_dns_label(service, "service")
            for domain in allowed:
                if domain != ANY_PEER:
                    check_dns_label(domain, "allowed domain")
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        if service in RESERVED_SERVICES:
            raise InvalidArgument(f"service name {service!r} is reserved by the gateway")
        if not 0 < port < 65536:
            raise InvalidArgument(f"service {service!r}: port {port} is out of range")
        current = self._services.get(service)
        if current is not None and current.task != task:
            raise AlreadyExists(f"service {service!r} is already registered by task {current.task!r}")
        entry = ServiceEntry(service, port, frozenset(allowed), task)
        self._services[service] = entry
        if current is not None and current != entry:
            self._notify(current)
        log.info("service %s -> 127.0.0.1:%d registered for %s", service, port, sorted(allowed) or "nobody")
        return entry

    def unregister(self, service: str) -> bool:
        """Remove a service (idempotent); True if it was registered."""
        entry = self._services.pop(service, None)
        if entry is None:
            return False
        log.info("service %s unregistered", service)
        self._notify(entry)
        return True

    def unregister_task(self, task: str) -> list[str]:
        """Remove every service and PTP session a task registered; returns the service names."""
        names = [name for name, entry in self._services.items() if entry.task == task]
        for name in names:
            self.unregister(name)
        for session in [s for s, entry in self._sessions.items() if entry.task == task]:
            self.unregister_session(session)
        return names

    # -- PTP sessions -----------------------------------------------------------------------------

    def register_session(self, session: str, *, parties: set[str], task: str | None = None) -> SessionEntry:
        """Open PTP session `session` for the domains in `parties` (this domain is added if missing)."""
        if not SESSION_ID.match(session):
            raise InvalidArgument(f"PTP session id {session!r} must be 1-128 letters, digits or ._:-")
        try:
            for domain in parties:
                check_dns_label(domain, "party domain")
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        current = self._sessions.get(session)
        if current is not None and current.task != task:
            raise AlreadyExists(f"PTP session {session!r} is already registered by task {current.task!r}")
        entry = SessionEntry(session, frozenset(parties | ({self._domain} if self._domain else set())), task)
        self._sessions[session] = entry
        log.info("PTP session %s registered for %s", session, sorted(entry.parties))
        return entry

    def unregister_session(self, session: str) -> bool:
        entry = self._sessions.pop(session, None)
        if entry is None:
            return False
        log.info("PTP session %s unregistered", session)
        for listener in list(self._session_listeners):
            try:
                listener(entry)
            except Exception:
                log.exception("session listener failed")
        return True

    def session(self, session: str) -> SessionEntry | None:
        return self._sessions.get(session)

    def subscribe_sessions(self, listener: Callable[[SessionEntry], None]) -> Callable[[], None]:
        """Call `listener(entry)` when a session is unregistered; returns an unsubscriber."""
        self._session_listeners.append(listener)
        return lambda: self._session_listeners.remove(listener)

    def resolve(self, service: str, source: str) -> ServiceEntry:
        """The entry `source` may reach, or the refusal that says why not."""
        entry = self._services.get(service)
        if entry is None:
            raise UnknownService(f"service {service!r} is not registered at {self._domain or 'this node'}")
        if source != self._domain and not entry.allows(source):
            raise NotAllowed(f"service {service!r} at {self._domain} is not open to domain {source!r}")
        return entry

    def get(self, service: str) -> ServiceEntry | None:
        return self._services.get(service)

    def services(self) -> list[ServiceEntry]:
        return sorted(self._services.values(), key=lambda e: e.name)

    def subscribe(self, listener: Callable[[ServiceEntry], None]) -> Callable[[], None]:
        """Call `listener(old_entry)` whenever an entry is removed or replaced; returns an unsubscriber."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, entry: ServiceEntry) -> None:
        for listener in list(self._listeners):
            try:
                listener(entry)
            except Exception:
                log.exception("service registry listener failed")
