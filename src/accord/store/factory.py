"""`open_store(url)`: the one place that turns a store URL into a Store.

Opening does no I/O (the SQL store creates its tables on first use) and imports SQLAlchemy only for SQL
URLs, so a node or a test with `memory://` starts fast; the first real call reports an unreachable
database as `Unavailable`.  URL forms:

- `memory://`                     MemoryStore (nothing survives the process)
- `sqlite:///relative/path.db`    SqlStore on a file (`sqlite:////abs/path.db` for an absolute path)
- `postgresql://user:pw@host:port/db` or `postgresql+psycopg://...`  SqlStore on PostgreSQL (psycopg 3)
"""

from __future__ import annotations

from accord.errors import InvalidArgument
from accord.store.base import Store
from accord.store.common import DEFAULT_EVENT_RETENTION
from accord.store.memory import MemoryStore

SUPPORTED = "memory://, sqlite:///PATH, postgresql://USER@HOST:PORT/DB"


def open_store(
    url: str,
    *,
    poll_interval: float = 0.2,
    event_retention: int = DEFAULT_EVENT_RETENTION,
) -> Store:
    """The Store for `url`; `InvalidArgument` naming the supported schemes if the URL is not one."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise InvalidArgument(f"store URL {url!r} has no scheme; use one of {SUPPORTED}")
    backend = scheme.lower().split("+", 1)[0]
    if backend == "memory":
        return MemoryStore(event_retention=event_retention)
    if backend in ("sqlite", "postgresql", "postgres"):
        from accord.store.sql import SqlStore

        if backend == "postgres":  # libpq accepts it; SQLAlchemy does not
            url = "postgresql" + url[len("postgres") :]
        return SqlStore(url, poll_interval=poll_interval, event_retention=event_retention)
    raise InvalidArgument(f"unsupported store URL scheme {scheme!r}; use one of {SUPPORTED}")
