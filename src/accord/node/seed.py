"""What every node's store holds before any user acts: its own Domain and the built-in AppImages.

Seeding is idempotent and runs at every start, so upgrading Accord (a new built-in engine, a moved
Python interpreter) updates the built-in AppImages in place, and a node whose store was wiped comes back
with a usable identity.
"""

from __future__ import annotations

import sys

from accord.errors import NotFound
from accord.kms.identity import fingerprint
from accord.resources.audit import AuditEntry
from accord.resources.domain import Domain, DomainSpec, DomainStatus
from accord.resources.meta import AnyResource, ObjectMeta
from accord.runtimes.builtin import builtin_appimages
from accord.settings import NodeSettings
from accord.store.base import Store

ACTOR = "node"


async def seed_store(store: Store, settings: NodeSettings) -> None:
    cert_pem = settings.cert_path.read_text()
    own = Domain(
        meta=ObjectMeta(name=settings.domain, domain=settings.domain),
        spec=DomainSpec(role="", cert=cert_pem),
        status=DomainStatus(cert_fingerprint=fingerprint(cert_pem)),
    )
    await _ensure(store, own)
    for image in builtin_appimages(sys.executable):
        image.meta.domain = settings.domain
        image.meta.labels["accord/builtin"] = "true"
        await _ensure(store, image)


async def _ensure(store: Store, obj: AnyResource) -> None:
    """Create `obj`, or update its spec/status if the stored one differs (audited either way)."""
    try:
        current = await store.get(obj.kind, obj.meta.name)
    except NotFound:
        await store.create(
            obj,
            audit=AuditEntry(actor=ACTOR, action="create", target_kind=obj.kind, target_name=obj.meta.name),
        )
        return
    if current.spec == obj.spec and current.status == obj.status:
        return
    updated = current.model_copy(update={"spec": obj.spec, "status": obj.status})
    await store.update(
        updated,
        audit=AuditEntry(actor=ACTOR, action="update", target_kind=obj.kind, target_name=obj.meta.name),
    )
