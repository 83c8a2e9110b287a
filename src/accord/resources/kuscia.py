"""Lossless conversion between Kuscia CRD documents (`kuscia.secretflow/v1alpha1`) and Accord resources.

Kuscia writes camelCase (`scheduleMode`, `taskInputConfig`, `domainID`); Accord stores snake_case.
Every field Kuscia defines for KusciaJob, AppImage, Domain, DomainRoute, DomainData, DomainDataSource
and DomainDataGrant maps to a field here; anything else in the document (fields of newer Kuscia
versions, `metadata.namespace`) is kept verbatim in the annotation `kuscia.secretflow/extra`, so
`to_kuscia(from_kuscia(doc)) == doc` for every document Kuscia accepts.
"""

from __future__ import annotations

import json
from typing import Any

from accord.errors import ErrorCode, InvalidArgument
from accord.resources.meta import AnyResource
from accord.resources.registry import parse_resource

KUSCIA_API_VERSION = "kuscia.secretflow/v1alpha1"
EXTRA_ANNOTATION = "kuscia.secretflow/extra"

# Kuscia kind -> Accord kind
KIND_MAP = {
    "KusciaJob": "Job",
    "AppImage": "AppImage",
    "Domain": "Domain",
    "DomainRoute": "DomainRoute",
    "DomainData": "DomainData",
    "DomainDataSource": "DomainDataSource",
    "DomainDataGrant": "DomainDataGrant",
    "KusciaDeployment": "Deployment",
}

# camelCase <-> snake_case per object path. Keys not listed are carried in the extra annotation.
_JOB_FIELDS = {
    "initiator": "initiator",
    "flowID": "flow_id",
    "scheduleMode": "schedule_mode",
    "maxParallelism": "max_parallelism",
    "tasks": "tasks",
    "customFields": "custom_fields",
}
_TASK_FIELDS = {
    "alias": "alias",
    "taskID": "task_id",
    "appImage": "app_image",
    "parties": "parties",
    "dependencies": "dependencies",
    "tolerable": "tolerable",
    "priority": "priority",
    "taskInputConfig": "input_config",
    "scheduleConfig": "schedule_config",
}
_PARTY_FIELDS = {
    "domainID": "domain",
    "role": "role",
    "resources": "resources",
    "bandwidthLimits": "bandwidth_limits",
}
_SCHEDULE_FIELDS = {
    "taskTimeoutSeconds": "task_timeout_seconds",
    "resourceReservedSeconds": "resource_reserved_seconds",
    "resourceReallocationIntervalSeconds": "resource_reallocation_interval_seconds",
}
_BANDWIDTH_FIELDS = {"destinationID": "destination", "limitKBps": "limit_kbps"}
_RESOURCES_FIELDS = {"cpu": "cpu", "memory": "memory", "kuscia.io/bandwidth": "bandwidth"}
_DOMAIN_FIELDS = {
    "role": "role",
    "cert": "cert",
    "interConnProtocols": "interconn_protocols",
    "master": "master",
}
_DATA_FIELDS = {
    "name": "name",
    "type": "type",
    "relativeURI": "relative_uri",
    "dataSource": "datasource",
    "author": "author",
    "vendor": "vendor",
    "fileFormat": "file_format",
    "attributes": "attributes",
    "columns": "columns",
}
_COLUMN_FIELDS = {"name": "name", "type": "type", "comment": "comment", "notNullable": "not_nullable"}
_SOURCE_FIELDS = {
    "type": "type",
    "name": "name",
    "uri": "uri",
    "accessDirectly": "access_directly",
}
_GRANT_FIELDS = {
    "author": "author",
    "domainDataID": "domaindata_id",
    "grantDomain": "grant_domain",
    "signature": "signature",
    "limit": "limit",
    "description": "description",
}
_GRANT_LIMIT_FIELDS = {
    "expirationTime": "expiration_time",
    "useCount": "use_count",
    "grantMode": "grant_mode",
    "flowID": "flow_id",
    "components": "components",
    "initiator": "initiator",
    "inputConfig": "input_config",
}


class _Extra:
    """Collects unmapped fields by JSON-pointer-like path so they can be restored."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    def rename(self, src: Any, fields: dict[str, str], path: str) -> dict[str, Any]:
        if not isinstance(src, dict):
            raise InvalidArgument(
                f"{path or 'spec'}: expected a mapping, got {type(src).__name__}",
                code=ErrorCode.MALFORMED_DOCUMENT,
            )
        out: dict[str, Any] = {}
        for key, value in src.items():
            if key in fields:
                out[fields[key]] = value
            else:
                self.items[f"{path}/{key}"] = value
        return out


def _invert(fields: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in fields.items()}


def is_kuscia_document(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("apiVersion") == KUSCIA_API_VERSION


def from_kuscia(doc: dict[str, Any]) -> AnyResource:
    """Convert one Kuscia document to an Accord resource (validated)."""
    kind = doc.get("kind")
    if kind not in KIND_MAP:
        raise InvalidArgument(
            f"unknown Kuscia kind {kind!r}; supported: {', '.join(sorted(KIND_MAP))}",
            code=ErrorCode.UNKNOWN_KIND,
        )
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict) or not metadata.get("name"):
        raise InvalidArgument(f"{kind}: metadata.name is required", code=ErrorCode.MALFORMED_DOCUMENT)
    extra = _Extra()
    spec_in = doc.get("spec") or {}
    spec = _convert_spec(kind, spec_in, extra)
    for key, value in doc.items():
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            extra.items[f"/{key}"] = value
    annotations = dict(metadata.get("annotations") or {})
    for key, value in metadata.items():
        if key not in ("name", "labels", "annotations"):
            extra.items[f"metadata/{key}"] = value
    if extra.items:
        annotations[EXTRA_ANNOTATION] = json.dumps(extra.items, sort_keys=True)
    native = {
        "kind": KIND_MAP[kind],
        "meta": {
            "name": metadata["name"],
            "labels": metadata.get("labels") or {},
            "annotations": annotations,
        },
        "spec": spec,
    }
    return parse_resource(native)


def _convert_spec(kind: str, spec: Any, extra: _Extra) -> dict[str, Any]:
    if kind == "KusciaJob":
        out = extra.rename(spec, _JOB_FIELDS, "spec")
        tasks = []
        for i, task in enumerate(out.get("tasks") or []):
            t = extra.rename(task, _TASK_FIELDS, f"spec/tasks/{i}")
            parties = []
            for j, party in enumerate(t.get("parties") or []):
                p = extra.rename(party, _PARTY_FIELDS, f"spec/tasks/{i}/parties/{j}")
                if "resources" in p and p["resources"] is not None:
                    p["resources"] = extra.rename(
                        p["resources"], _RESOURCES_FIELDS, f"spec/tasks/{i}/parties/{j}/resources"
                    )
                p["bandwidth_limits"] = [
                    extra.rename(b, _BANDWIDTH_FIELDS, f"spec/tasks/{i}/parties/{j}/bandwidthLimits/{k}")
                    for k, b in enumerate(p.get("bandwidth_limits") or [])
                ]
                parties.append(p)
            t["parties"] = parties
            if t.get("schedule_config") is not None:
                t["schedule_config"] = extra.rename(
                    t["schedule_config"], _SCHEDULE_FIELDS, f"spec/tasks/{i}/scheduleConfig"
                )
            tasks.append(t)
        out["tasks"] = tasks
        return out
    if kind == "AppImage":
        return _appimage_from_kuscia(spec, extra)
    if kind == "Domain":
        return extra.rename(spec, _DOMAIN_FIELDS, "spec")
    if kind == "DomainRoute":
        return _route_from_kuscia(spec, extra)
    if kind == "DomainData":
        out = extra.rename(spec, _DATA_FIELDS, "spec")
        out["columns"] = [
            extra.rename(c, _COLUMN_FIELDS, f"spec/columns/{i}")
            for i, c in enumerate(out.get("columns") or [])
        ]
        if "file_format" in out and isinstance(out["file_format"], str):
            out["file_format"] = out["file_format"].upper()
        return out
    if kind == "DomainDataSource":
        out = extra.rename(spec, _SOURCE_FIELDS, "spec")
        return out
    if kind == "DomainDataGrant":
        out = extra.rename(spec, _GRANT_FIELDS, "spec")
        if out.get("limit") is not None:
            out["limit"] = extra.rename(out["limit"], _GRANT_LIMIT_FIELDS, "spec/limit")
        return out
    if kind == "KusciaDeployment":
        out = extra.rename(spec, {"initiator": "initiator", "inputConfig": "input_config"}, "spec")
        out["parties"] = []
        for i, party in enumerate(spec.get("parties") or []):
            p = extra.rename(
                party,
                {
                    "domainID": "domain",
                    "appImageRef": "app_image",
                    "role": "role",
                    "serviceNamePrefix": "service_name_prefix",
                },
                f"spec/parties/{i}",
            )
            out["parties"].append(p)
        return out
    raise AssertionError(kind)  # pragma: no cover - KIND_MAP guards this


def _appimage_from_kuscia(spec: Any, extra: _Extra) -> dict[str, Any]:
    out = extra.rename(
        spec,
        {"image": "image", "configTemplates": "config_templates", "deployTemplates": "deploy_templates"},
        "spec",
    )
    templates = out.get("deploy_templates") or []
    # RunP runs the first container of the first template; the templates stay verbatim.
    if templates:
        containers = (templates[0].get("spec") or {}).get("containers") or []
        if containers:
            c = containers[0]
            out["command"] = list(c.get("command") or [])
            out["args"] = list(c.get("args") or [])
            out["working_dir"] = c.get("workingDir", "")
            out["env"] = {e["name"]: str(e.get("value", "")) for e in c.get("env") or []}
            out["ports"] = [
                {"name": p["name"], "protocol": p.get("protocol", "HTTP"), "scope": p.get("scope", "Cluster")}
                for p in c.get("ports") or []
            ]
            out["config_mounts"] = {
                m["subPath"]: m["mountPath"] for m in c.get("configVolumeMounts") or [] if "subPath" in m
            }
    return out


def _route_from_kuscia(spec: Any, extra: _Extra) -> dict[str, Any]:
    out = extra.rename(
        spec,
        {
            "source": "source",
            "destination": "destination",
            "interConnProtocol": "interconn_protocol",
            "authenticationType": "authentication_type",
            "endpoint": "endpoint",
            "transit": "transit",
        },
        "spec",
    )
    endpoint = out.get("endpoint")
    if isinstance(endpoint, dict):
        host = endpoint.get("host", "")
        ports = endpoint.get("ports") or [{}]
        port = ports[0]
        scheme = "https" if port.get("isTLS", True) else "http"
        out["endpoint"] = f"{scheme}://{host}:{port.get('port', 443)}"
        if port.get("pathPrefix"):
            out["path_prefix"] = port["pathPrefix"]
        extra.items["spec/endpoint"] = endpoint
    transit = out.get("transit")
    if isinstance(transit, dict):
        out["transit"] = ((transit.get("domain") or {}).get("domainID")) or ""
        extra.items["spec/transit"] = transit
    if out.get("authentication_type") == "None":
        out["authentication_type"] = "MTLS"
        extra.items["spec/authenticationType"] = "None"
    return out


def to_kuscia(res: AnyResource) -> dict[str, Any]:
    """Convert back to the Kuscia document (inverse of `from_kuscia`)."""
    kuscia_kind = {v: k for k, v in KIND_MAP.items()}.get(res.kind)
    if kuscia_kind is None:
        raise InvalidArgument(f"{res.kind} has no Kuscia equivalent", code=ErrorCode.UNKNOWN_KIND)
    annotations = dict(res.meta.annotations)
    extra: dict[str, Any] = json.loads(annotations.pop(EXTRA_ANNOTATION, "{}"))
    spec_native = res.spec.model_dump(mode="json", exclude_unset=True)
    spec = _spec_to_kuscia(kuscia_kind, spec_native)
    metadata: dict[str, Any] = {"name": res.meta.name}
    if res.meta.labels:
        metadata["labels"] = dict(res.meta.labels)
    if annotations:
        metadata["annotations"] = annotations
    doc: dict[str, Any] = {
        "apiVersion": KUSCIA_API_VERSION,
        "kind": kuscia_kind,
        "metadata": metadata,
        "spec": spec,
    }
    for path, value in extra.items():
        _restore(doc, path, value)
    return doc


def _restore(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = [p for p in path.split("/") if p]
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[parts[-1]] = value


def _rename_back(src: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    inverse = _invert(fields)
    return {inverse[k]: v for k, v in src.items() if k in inverse}


def _spec_to_kuscia(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    if kind == "KusciaJob":
        out = _rename_back(spec, _JOB_FIELDS)
        tasks = []
        for t in spec.get("tasks", []):
            kt = _rename_back(t, _TASK_FIELDS)
            parties = []
            for p in t.get("parties", []):
                kp = _rename_back(p, _PARTY_FIELDS)
                if p.get("resources") is not None:
                    kp["resources"] = _rename_back(p["resources"], _RESOURCES_FIELDS)
                if "bandwidth_limits" in p:
                    if p["bandwidth_limits"]:
                        kp["bandwidthLimits"] = [
                            _rename_back(b, _BANDWIDTH_FIELDS) for b in p["bandwidth_limits"]
                        ]
                    else:
                        kp.pop("bandwidthLimits", None)
                parties.append(kp)
            kt["parties"] = parties
            if t.get("schedule_config") is not None:
                kt["scheduleConfig"] = _rename_back(t["schedule_config"], _SCHEDULE_FIELDS)
            tasks.append(kt)
        out["tasks"] = tasks
        return out
    if kind == "AppImage":
        return _rename_back(
            spec,
            {"image": "image", "configTemplates": "config_templates", "deployTemplates": "deploy_templates"},
        )
    if kind == "Domain":
        return _rename_back(spec, _DOMAIN_FIELDS)
    if kind == "DomainRoute":
        out = _rename_back(
            spec,
            {
                "source": "source",
                "destination": "destination",
                "interConnProtocol": "interconn_protocol",
                "authenticationType": "authentication_type",
                "endpoint": "endpoint",
                "transit": "transit",
            },
        )
        return out
    if kind == "DomainData":
        out = _rename_back(spec, _DATA_FIELDS)
        if "columns" in spec:
            out["columns"] = [_rename_back(c, _COLUMN_FIELDS) for c in spec["columns"]]
        return out
    if kind == "DomainDataSource":
        return _rename_back(spec, _SOURCE_FIELDS)
    if kind == "DomainDataGrant":
        out = _rename_back(spec, _GRANT_FIELDS)
        if "limit" in spec:
            out["limit"] = _rename_back(spec["limit"], _GRANT_LIMIT_FIELDS)
        return out
    if kind == "KusciaDeployment":
        out = _rename_back(spec, {"initiator": "initiator", "inputConfig": "input_config"})
        out["parties"] = [
            _rename_back(
                p,
                {
                    "domainID": "domain",
                    "appImageRef": "app_image",
                    "role": "role",
                    "serviceNamePrefix": "service_name_prefix",
                },
            )
            for p in spec.get("parties", [])
        ]
        return out
    raise AssertionError(kind)  # pragma: no cover
