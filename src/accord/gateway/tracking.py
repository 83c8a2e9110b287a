"""ConnectionTracker: which open connections belong to which peer domain and which local service.

Revocation must reach connections that are already open, not only new ones: when a peer's Domain is
deleted or its certificate replaced, every connection with that peer (inbound, pooled outbound, transit
sessions through us) is aborted; when a task unregisters a service, every tunnel and in-flight exchange
with that service is aborted.  Handlers register their streams here for as long as they use them
(`with tracker.track(stream, domains=..., services=...)`), and the gateway calls `revoke_*` from the
routing-table and registry listeners.  Aborting (not closing) is deliberate: a revoked peer gets no
further byte, not even the rest of a response in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from accord.gateway.stream import Stream


class ConnectionTracker:
    def __init__(self) -> None:
        self._domains: dict[str, set[Stream]] = {}
        self._services: dict[str, set[Stream]] = {}
        self._all: set[Stream] = set()

    @contextmanager
    def track(
        self, *streams: Stream, domains: Iterable[str] = (), services: Iterable[str] = ()
    ) -> Iterator[None]:
        domains, services = list(domains), list(services)
        for stream in streams:
            self._all.add(stream)
            for d in domains:
                self._domains.setdefault(d, set()).add(stream)
            for s in services:
                self._services.setdefault(s, set()).add(stream)
        try:
            yield
        finally:
            for stream in streams:
                self._all.discard(stream)
                for d in domains:
                    _discard(self._domains, d, stream)
                for s in services:
                    _discard(self._services, s, stream)

    def revoke_domain(self, domain: str) -> int:
        return _abort(self._domains.pop(domain, set()))

    def revoke_service(self, service: str) -> int:
        return _abort(self._services.pop(service, set()))

    def abort_all(self) -> int:
        return _abort(set(self._all))

    def count(self, domain: str | None = None) -> int:
        if domain is None:
            return len(self._all)
        return len(self._domains.get(domain, ()))


def _discard(index: dict[str, set[Stream]], key: str, stream: Stream) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(stream)
        if not members:
            del index[key]


def _abort(streams: set[Stream]) -> int:
    for stream in streams:
        stream.abort()
    return len(streams)
