"""The access decision for reading a DomainData, enforced (Kuscia's grants are advisory; ours are not).

`authorize_read` is the one place that says whether a read may happen, and every read DataMesh serves
goes through it (the Flight service calls it before the first byte streams):

1. **The owner reads its own data.**  The owner is the DomainData's `meta.domain` (else its author, else
   the local domain).  The read is audited (`data.read`).
2. **Any other domain needs a live DomainDataGrant** authored by the owner for that DomainData and that
   domain.  Live means: not revoked (a revoked grant is deleted, or its status phase is Unavailable), not
   expired (`limit.expiration_time`), uses left (`limit.use_count`; None = unlimited), the columns read
   within the grant's columns (empty = all), and — when the grant sets them — the reading app among
   `purpose`/`limit.components`, the job's initiator equal to `limit.initiator` and its flow equal to
   `limit.flow_id`.
3. **A use is consumed atomically and exactly once.**  The grant's `status.uses` is incremented, a
   `use_records` entry appended and the `data.read` AuditRecord written in *one* store update, with
   compare-and-swap on the grant's resource_version.  A concurrent use makes the CAS fail with
   `Conflict`; the decision is then re-evaluated from the fresh grant (so the last use cannot be spent
   twice) and retried, a bounded number of times.

A refusal is `PermissionDenied` with code 11703 and a message naming the grant and why (expired at ...,
exhausted: 3 of 3 uses, columns [...] outside the grant, revoked ...), so the owner and the reader can see
what to change.  A use is consumed when the read is authorised, before streaming: a read that then fails
mid-stream still counts (the conservative side for the owner).

`consume=False` evaluates the same rules without spending a use or writing an audit record (the Flight
service's `GetFlightInfo` uses it to fail early).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from accord.errors import Conflict, ErrorCode, InvalidArgument, NotFound, PermissionDenied, Unavailable
from accord.resources.audit import AuditEntry
from accord.resources.data import DomainData, DomainDataGrant, GrantUse
from accord.resources.job import Job
from accord.resources.meta import utcnow
from accord.store.base import Store

MAX_CAS_ATTEMPTS = 64
MAX_USE_RECORDS = 1000  # `status.uses` counts every use; the record list keeps the newest


class Decision(BaseModel):
    """An allowed read: who may read what, under which grant (None for the owner)."""

    model_config = ConfigDict(frozen=True)

    data: str
    requester_domain: str
    owner_domain: str
    owner: bool
    columns: list[str] | None = None  # None = all columns
    grant: str | None = None
    uses_left: int | None = None  # after this use; None = unlimited (or the owner)


def _denied(message: str) -> PermissionDenied:
    return PermissionDenied(message, code=ErrorCode.GRANT_DENIED)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def _job_context(store: Store, job: str) -> tuple[str, str]:
    """(initiator, flow_id) of a job stored on this node, ('', '') when unknown."""
    if not job:
        return "", ""
    try:
        obj = await store.get("Job", job)
    except NotFound:
        return "", ""
    if not isinstance(obj, Job):  # pragma: no cover
        return "", ""
    return obj.spec.initiator, obj.spec.flow_id


def why_not(
    grant: DomainDataGrant,
    *,
    owner: str,
    columns: Sequence[str] | None,
    app: str,
    initiator: str,
    job: str,
    flow_id: str,
    now: datetime,
) -> str | None:
    """Why `grant` does not allow this read (None when it does)."""
    spec, limit, status = grant.spec, grant.spec.limit, grant.status
    if spec.author and spec.author != owner:
        return f"it was authored by {spec.author!r}, not by the data's owner {owner!r}"
    if limit.expiration_time is not None and _aware(limit.expiration_time) <= now:
        return f"it expired at {_aware(limit.expiration_time).isoformat()}"
    if limit.use_count is not None and status.uses >= limit.use_count:
        return f"it is exhausted: {status.uses} of {limit.use_count} uses spent"
    if status.phase == "Unavailable":
        return f"it was revoked ({status.message or 'status Unavailable'})"
    if spec.columns:
        if columns is None:
            return f"the read asks for all columns but the grant allows only {spec.columns}"
        outside = [c for c in columns if c not in spec.columns]
        if outside:
            return f"columns {outside} are outside the grant (granted: {spec.columns})"
    apps = [*limit.components, *([spec.purpose] if spec.purpose else [])]
    if apps and app not in apps:
        return f"it is for {apps}, not for app {app or '(none)'!r}"
    if limit.initiator and limit.initiator != initiator:
        return f"it is for jobs initiated by {limit.initiator!r}, not by {initiator or '(unknown)'!r}"
    if limit.flow_id and limit.flow_id not in (flow_id, job):
        return f"it is for flow {limit.flow_id!r}, not for {flow_id or job or '(none)'!r}"
    return None


async def authorize_read(
    store: Store,
    *,
    domain_data: DomainData | str,
    requester_domain: str,
    task: str = "",
    job: str = "",
    app: str = "",
    columns: Sequence[str] | None = None,
    initiator: str = "",
    flow_id: str = "",
    grant: str | None = None,
    local_domain: str = "",
    consume: bool = True,
) -> Decision:
    """Decide (and record) a read of `domain_data` by `requester_domain`; see the module docstring.

    `grant` names the grant the task was given, when known, so a revoked one is reported by name.
    Raises `PermissionDenied` (11703), `InvalidArgument` (11500) for a column the data does not have,
    `NotFound` (11501) for unknown data, `Unavailable` when the grant stays contended.
    """
    data = domain_data if isinstance(domain_data, DomainData) else await _get_data(store, domain_data)
    name = data.meta.name
    wanted = list(columns) if columns is not None else None
    known = [c.name for c in data.spec.columns]
    if wanted is not None and known:
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise InvalidArgument(
                f"DomainData {name!r} has no column {unknown[0]!r} (columns: {', '.join(known)})",
                code=ErrorCode.DATA_INVALID,
            )
    # For grant checks an "all columns" read means every known column.
    effective = wanted if wanted is not None else (known or None)
    owner = data.meta.domain or data.spec.author or local_domain
    actor = f"task/{task}" if task else f"domain/{requester_domain}"
    details = {
        "data": name,
        "task": task,
        "job": job,
        "domain": requester_domain,
        "columns": wanted if wanted is not None else "*",
    }
    if requester_domain == owner:
        if consume:
            await store.append_audit(
                AuditEntry(
                    actor=actor,
                    action="data.read",
                    target_kind="DomainData",
                    target_name=name,
                    details={**details, "grant": None},
                )
            )
        return Decision(
            data=name, requester_domain=requester_domain, owner_domain=owner, owner=True, columns=wanted
        )
    if not initiator or not flow_id:
        job_initiator, job_flow = await _job_context(store, job)
        initiator = initiator or job_initiator
        flow_id = flow_id or job_flow
    for _ in range(MAX_CAS_ATTEMPTS):
        candidates = await _grants_for(store, name, requester_domain, grant)
        if not candidates:
            if grant is not None:
                raise _denied(
                    f"grant {grant!r} for DomainData {name!r} was revoked (it no longer exists); "
                    f"ask {owner!r} for a new grant"
                )
            raise _denied(
                f"domain {requester_domain!r} has no grant for DomainData {name!r} owned by {owner!r} "
                f"(none exists, or it was revoked); ask {owner!r} to grant it"
            )
        now = utcnow()
        reasons: list[str] = []
        chosen: DomainDataGrant | None = None
        for candidate in candidates:
            reason = why_not(
                candidate,
                owner=owner,
                columns=effective,
                app=app,
                initiator=initiator,
                job=job,
                flow_id=flow_id,
                now=now,
            )
            if reason is None:
                chosen = candidate
                break
            reasons.append(f"grant {candidate.meta.name!r}: {reason}")
        if chosen is None:
            raise _denied(
                f"domain {requester_domain!r} may not read DomainData {name!r}: " + "; ".join(reasons)
            )
        limit = chosen.spec.limit
        spent = 1 if consume else 0
        uses_left = None if limit.use_count is None else limit.use_count - chosen.status.uses - spent
        decision = Decision(
            data=name,
            requester_domain=requester_domain,
            owner_domain=owner,
            owner=False,
            columns=wanted,
            grant=chosen.meta.name,
            uses_left=uses_left,
        )
        if not consume:
            return decision
        chosen.status.uses += 1
        chosen.status.use_records.append(
            GrantUse(use_time=now, grant_domain=requester_domain, component=app, task=task)
        )
        del chosen.status.use_records[:-MAX_USE_RECORDS]
        try:
            await store.update(
                chosen,
                audit=AuditEntry(
                    actor=actor,
                    action="data.read",
                    target_kind="DomainData",
                    target_name=name,
                    details={**details, "grant": chosen.meta.name, "uses_left": uses_left},
                ),
            )
        except (Conflict, NotFound):
            continue  # a concurrent use or a revocation: decide again from the fresh state
        return decision
    raise Unavailable(
        f"the grant for DomainData {name!r} is being used by many readers at once; retry the read"
    )


async def _get_data(store: Store, name: str) -> DomainData:
    obj = await store.get("DomainData", name)
    assert isinstance(obj, DomainData)
    return obj


async def _grants_for(store: Store, data: str, requester: str, grant: str | None) -> list[DomainDataGrant]:
    if grant is not None:
        try:
            obj = await store.get("DomainDataGrant", grant)
        except NotFound:
            return []
        if (
            isinstance(obj, DomainDataGrant)
            and obj.spec.domaindata_id == data
            and obj.spec.grant_domain == requester
        ):
            return [obj]
        raise _denied(f"grant {grant!r} is not a grant of DomainData {data!r} to domain {requester!r}")
    return [
        g
        for g in await store.list("DomainDataGrant")
        if isinstance(g, DomainDataGrant)
        and g.spec.domaindata_id == data
        and g.spec.grant_domain == requester
    ]
