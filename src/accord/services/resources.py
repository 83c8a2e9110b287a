"""ResourceService: the one place where user intent about stored objects is checked and written.

Every front door (native HTTP API, KusciaAPI adapters, gRPC later) calls these use cases, so the rules
below hold whichever door a request came through:

- **Validate everything, then write.**  `apply` parses the whole stream first
  (`parse_documents`), then prepares and checks every document (kind allowed, DAG valid, per-kind
  validators, no name twice, immutable spec untouched) against the store as it is now; only when all
  documents pass does it write.  A bad document therefore writes nothing.  The Store protocol has no
  multi-object transaction, so a *concurrent* change between the check and the writes can still stop an
  apply half way; the failing write raises its own precise error (e.g. a stale resource_version) and the
  documents before it stay applied, exactly as if they had been applied one by one.
- **Users write spec, labels and annotations; never status or identity.**  On create the status is
  reset to the kind's default and uid/generation/timestamps are left to the store; on update the stored
  status is kept.  Controllers write status directly through the store, not through this service.
- **Some specs are immutable.**  A Job's DAG, a Task and an AuditRecord describe something that has
  happened or is happening; changing them in place would make the history lie, so a changed spec is a
  `Conflict` telling the user to delete and re-create.
- **Tasks and AuditRecords are the node's own.**  Tasks are created by the job controller and audit
  records by the store itself, so users may not create them (PermissionDenied); audit records can never
  be replaced or deleted (the chain is append-only), and a Task that belongs to a Job goes with its Job.
- **Every mutation is audited in the same transaction** by handing the store an `AuditEntry`; deleting
  a Job deletes its Tasks (label `accord/job=<job>`), each with its own audit record.
- `meta.domain` defaults to this node's domain.

`validators` is a per-kind hook (kind -> callable raising AccordError) through which other layers add
their checks without this module importing them (e.g. the gateway checks a DomainRoute endpoint).
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from accord.errors import (
    AccordError,
    Conflict,
    ErrorCode,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    invalid,
    stale_version,
)
from accord.interop.common import delete_tasks_of
from accord.resources.audit import AuditEntry
from accord.resources.documents import parse_documents, to_resource
from accord.resources.kuscia import KIND_MAP, is_kuscia_document
from accord.resources.meta import AnyResource, ObjectMeta, Selector
from accord.resources.registry import resolve_kind
from accord.scheduling.dag import validate_job
from accord.settings import NodeSettings
from accord.store.base import Store, WatchEvent

JOB_LABEL = "accord/job"
IMMUTABLE_SPEC_KINDS = frozenset({"Job", "Task", "AuditRecord"})
NODE_OWNED_KINDS = frozenset({"Task", "AuditRecord"})

Validator = Callable[[AnyResource], None]
ApplyAction = Literal["created", "updated", "unchanged"]


class ApplyResult(BaseModel):
    """What `apply` did with one document."""

    model_config = ConfigDict(frozen=True)

    kind: str
    name: str
    action: ApplyAction


@dataclass(frozen=True)
class _Planned:
    """One checked document of an apply: what will be written, and how."""

    action: ApplyAction
    obj: AnyResource
    changed: tuple[str, ...] = ()


def _spec_json(obj: AnyResource) -> Any:
    return obj.spec.model_dump(mode="json")


def _with_prefix(exc: AccordError, prefix: str) -> AccordError:
    """The same error type and code with `prefix` (e.g. 'document 3: ') in front of the message."""
    if not prefix:
        return exc
    renamed = type(exc)(prefix + exc.message, code=exc.code)
    renamed.retryable = exc.retryable
    return renamed


class ResourceService:
    """Create, read, replace, delete, apply and watch resources under the rules in the module docstring."""

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        validators: Mapping[str, Validator] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._validators = dict(validators or {})

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, kind: str, name: str) -> AnyResource:
        return await self._store.get(resolve_kind(kind), name)

    async def list(
        self,
        kind: str,
        selector: Selector | str | None = None,
        domain: str | None = None,
    ) -> list[AnyResource]:
        canonical = resolve_kind(kind)
        parsed = Selector.parse(selector) if isinstance(selector, str) else selector
        return await self._store.list(canonical, selector=parsed, domain=domain or None)

    async def revision(self) -> int:
        """The store revision; read it *before* listing, then watch from it to miss nothing."""
        return await self._store.revision()

    def watch(
        self,
        kind: str | None,
        since: int = 0,
        selector: Selector | str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Changes after `since`; kind and selector are checked now, before anything streams."""
        canonical = resolve_kind(kind) if kind else None
        parsed = Selector.parse(selector) if isinstance(selector, str) else selector
        if since < 0:
            raise InvalidArgument(f"since must be a revision >= 0, got {since}")
        return self._store.watch(canonical, since=since, selector=parsed)

    # -- writes -----------------------------------------------------------------------------------

    async def apply(self, text: str | bytes, actor: str) -> builtins.list[ApplyResult]:
        """Create or update every document of a YAML/JSON stream; all checks pass before any write."""
        objects = parse_documents(text)
        many = len(objects) > 1
        known = await self._known_domains(o.meta.name for o in objects if o.kind == "Domain")
        seen: dict[tuple[str, str], int] = {}
        plans: builtins.list[_Planned] = []
        for index, raw in enumerate(objects):
            prefix = f"document {index + 1}: " if many else ""
            try:
                obj = self._prepare_new(raw)
                first = seen.setdefault(obj.key(), index)
                if first != index:
                    raise InvalidArgument(
                        f"{obj.kind} {obj.meta.name!r} appears more than once in the stream "
                        f"(documents {first + 1} and {index + 1})",
                        code=ErrorCode.MALFORMED_DOCUMENT,
                    )
                self._validate(obj, known)
                plans.append(self._plan(obj, await self._find(obj.kind, obj.meta.name)))
            except AccordError as exc:
                raise _with_prefix(exc, prefix) from exc
        results: builtins.list[ApplyResult] = []
        for plan in plans:
            obj = plan.obj
            if plan.action == "created":
                await self._store.create(obj, audit=self._entry(actor, "create", obj, via="apply"))
            elif plan.action == "updated":
                await self._store.update(
                    obj, audit=self._entry(actor, "update", obj, via="apply", changed=list(plan.changed))
                )
            results.append(ApplyResult(kind=obj.kind, name=obj.meta.name, action=plan.action))
        return results

    async def create(
        self, doc: Mapping[str, Any] | AnyResource, actor: str, kind: str | None = None
    ) -> AnyResource:
        """Create one object; `kind` (from the URL) must agree with the document's kind."""
        obj = self._prepare_new(self._parse_one(doc, kind))
        self._validate(obj, await self._known_domains(() if obj.kind != "Domain" else (obj.meta.name,)))
        return await self._store.create(obj, audit=self._entry(actor, "create", obj, via="create"))

    async def replace(
        self,
        doc: Mapping[str, Any] | AnyResource,
        actor: str,
        kind: str | None = None,
        name: str | None = None,
    ) -> AnyResource:
        """Replace spec/labels/annotations with compare-and-swap on `meta.resource_version`."""
        obj = self._parse_one(doc, kind, name)
        if obj.kind == "AuditRecord":
            raise PermissionDenied("audit records are append-only: they cannot be replaced")
        obj = self._with_domain(obj)
        current = await self._store.get(obj.kind, obj.meta.name)
        version = obj.meta.resource_version
        if version == 0:
            raise InvalidArgument(
                f"meta.resource_version is required to replace {obj.kind} {obj.meta.name!r}: get the "
                f"object, change it and send it back (current resource_version is "
                f"{current.meta.resource_version})"
            )
        if version != current.meta.resource_version:
            raise stale_version(obj.kind, obj.meta.name, version, current.meta.resource_version)
        plan = self._plan(obj, current)
        if plan.action == "unchanged":
            return current
        self._run_validator(plan.obj)
        return await self._store.update(
            plan.obj, audit=self._entry(actor, "update", plan.obj, via="replace", changed=list(plan.changed))
        )

    async def delete(self, kind: str, name: str, resource_version: int | None, actor: str) -> AnyResource:
        """Delete one object (CAS when a version is given); a Job takes its Tasks with it."""
        canonical = resolve_kind(kind)
        if canonical == "AuditRecord":
            raise PermissionDenied("audit records are append-only: they cannot be deleted")
        if canonical == "Task":
            task = await self._store.get("Task", name)
            job = task.meta.labels.get(JOB_LABEL)
            if job and await self._find("Job", job) is not None:
                raise PermissionDenied(
                    f"Task {name!r} belongs to Job {job!r}: delete the Job (`accord delete job {job}`), "
                    "which deletes its tasks"
                )
        deleted = await self._store.delete(
            canonical,
            name,
            resource_version=resource_version,
            audit=AuditEntry(actor=actor, action="delete", target_kind=canonical, target_name=name),
        )
        if canonical == "Job":
            await delete_tasks_of(self._store, name, actor)
        return deleted

    # -- internals --------------------------------------------------------------------------------

    def _parse_one(
        self, doc: Mapping[str, Any] | AnyResource, kind: str | None, name: str | None = None
    ) -> AnyResource:
        """A single document as a resource, checked against the kind and name given in the URL."""
        if isinstance(doc, Mapping):
            body = dict(doc)
            expected = resolve_kind(kind) if kind else None
            if expected is not None and "kind" not in body:
                body["kind"] = expected
            if name is not None and isinstance(body.get("meta"), dict) and "name" not in body["meta"]:
                body["meta"] = {**body["meta"], "name": name}
            obj = to_resource(body)
            doc_kind = str(body.get("kind"))
        else:
            obj, doc_kind, expected = doc, doc.kind, resolve_kind(kind) if kind else None
        if expected is not None and obj.kind != expected:
            if isinstance(doc, Mapping) and is_kuscia_document(dict(doc)):
                doc_kind = f"{doc_kind} (= {KIND_MAP.get(doc_kind, doc_kind)})"
            raise InvalidArgument(
                f"the document's kind {doc_kind} does not match the kind in the URL ({expected})"
            )
        if name is not None and obj.meta.name != name:
            raise InvalidArgument(
                f"the document's meta.name {obj.meta.name!r} does not match the name in the URL ({name!r})"
            )
        return obj

    def _with_domain(self, obj: AnyResource) -> AnyResource:
        if obj.meta.domain:
            return obj
        return obj.model_copy(update={"meta": obj.meta.model_copy(update={"domain": self._settings.domain})})

    def _prepare_new(self, obj: AnyResource) -> AnyResource:
        """Refuse node-owned kinds, default the domain, drop user-supplied status and identity."""
        if obj.kind in NODE_OWNED_KINDS:
            why = (
                "tasks are created by the node from a Job: submit a Job instead"
                if obj.kind == "Task"
                else "audit records are appended by the node for every action"
            )
            raise PermissionDenied(f"users cannot create {obj.kind} objects ({obj.meta.name!r}): {why}")
        meta = ObjectMeta(
            name=obj.meta.name,
            domain=obj.meta.domain or self._settings.domain,
            resource_version=obj.meta.resource_version,  # only used as a CAS guard by apply
            labels=dict(obj.meta.labels),
            annotations=dict(obj.meta.annotations),
        )
        status = type(obj).model_fields["status"].get_default(call_default_factory=True)
        return obj.model_copy(update={"meta": meta, "status": status})

    async def _known_domains(self, extra: Iterable[str] = ()) -> set[str]:
        """This node's domain, every Domain in the store, and Domains being applied alongside."""
        known = {self._settings.domain, *extra}
        known.update(d.meta.name for d in await self._store.list("Domain"))
        return known

    def _validate(self, obj: AnyResource, known_domains: set[str]) -> None:
        if obj.kind == "Job":
            validate_job(obj.spec, known_domains=known_domains)
        self._run_validator(obj)

    def _run_validator(self, obj: AnyResource) -> None:
        validator = self._validators.get(obj.kind)
        if validator is None:
            return
        try:
            validator(obj)
        except ValueError as exc:  # a validator may raise a plain ValueError; give it the kind's code
            raise invalid(obj.kind, f"invalid {obj.kind} {obj.meta.name!r}: {exc}") from exc

    async def _find(self, kind: str, name: str) -> AnyResource | None:
        try:
            return await self._store.get(kind, name)
        except NotFound:
            return None

    def _plan(self, obj: AnyResource, current: AnyResource | None) -> _Planned:
        """Decide create/update/unchanged for `obj` against the stored `current`, or refuse."""
        if current is None:
            fresh = obj.model_copy(update={"meta": obj.meta.model_copy(update={"resource_version": 0})})
            return _Planned("created", fresh)
        name, kind = obj.meta.name, obj.kind
        if obj.meta.resource_version and obj.meta.resource_version != current.meta.resource_version:
            raise stale_version(kind, name, obj.meta.resource_version, current.meta.resource_version)
        if obj.meta.domain != current.meta.domain:
            raise Conflict(
                f"{kind} {name!r} belongs to domain {current.meta.domain!r}; its owner cannot change "
                f"to {obj.meta.domain!r}: delete and re-create it"
            )
        changed: builtins.list[str] = []
        if _spec_json(obj) != _spec_json(current):
            if kind in IMMUTABLE_SPEC_KINDS:
                raise Conflict(
                    f"the spec of {kind} {name!r} cannot change after it is created: delete and re-create "
                    f"it (`accord delete {kind.lower()} {name}`, then apply again)"
                )
            changed.append("spec")
        if obj.meta.labels != current.meta.labels:
            changed.append("labels")
        if obj.meta.annotations != current.meta.annotations:
            changed.append("annotations")
        if not changed:
            return _Planned("unchanged", current)
        meta = current.meta.model_copy(
            update={"labels": dict(obj.meta.labels), "annotations": dict(obj.meta.annotations)}
        )
        updated = current.model_copy(update={"meta": meta, "spec": obj.spec})
        return _Planned("updated", updated, tuple(changed))

    @staticmethod
    def _entry(actor: str, action: str, obj: AnyResource, **details: Any) -> AuditEntry:
        return AuditEntry(
            actor=actor,
            action=action,
            target_kind=obj.kind,
            target_name=obj.meta.name,
            details=details,
        )
