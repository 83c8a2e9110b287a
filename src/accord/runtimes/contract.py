"""The engine contract as pure functions: env variables, cluster definition, ports, config templates.

Kept apart from any runtime so RunP, a sandboxed RunP and RunK hand engines byte-identical values, and
so every rule here is a unit test.  The names and JSON shapes are Kuscia's (kuscia.md section 4), so an
engine written for Kuscia runs unchanged:

- `TASK_ID`, `TASK_INPUT_CONFIG`, `KUSCIA_DOMAIN_ID`;
- `TASK_CLUSTER_DEFINE` = `{"parties":[{"name","role","services":[{"portName","endpoints"}]}],
  "selfPartyIdx","selfEndpointIdx"}`.  A Cluster-scope port is published to every party as
  `<service>.<domain>.svc` (no port: it goes through the gateway); a Domain-scope port only to its own
  party as `<service>.<domain>.svc:<port>`; a Local-scope port is not published.  The service name is
  Kuscia's `<task>-[<role>-]0-<port>`, with an `svc-` prefix if it would start with a digit and a hash
  when longer than a DNS label allows;
- `ALLOCATED_PORTS` = `{"ports":[{"name","port","scope","protocol"}]}` and `KUSCIA_PORT_<NAME>_NUMBER`;
- Accord's own: `ACCORD_NODE_API` (the node's local API URL) and `ACCORD_TASK_TOKEN` (a one-time token
  for that API; the node stores only its SHA-256), `ACCORD_WORK_DIR`.

Config templates use the `{{.NAME}}` subset of Go templates, where NAME is one of the variables above or
the AppImage's env.  A placeholder written inside a JSON string (`"{{.TASK_CLUSTER_DEFINE}}"`) receives
the JSON-escaped value, so the SecretFlow-style template `{"cluster":"{{.TASK_CLUSTER_DEFINE}}"}` renders
to valid JSON.  Anything else between `{{` and `}}` (Kuscia's `{{{.X.a.b}}}` paths, pipelines) and any
unknown name is refused with an error naming the template, rather than silently rendering `<no value>`.
Rendered files go under the task dir only: absolute paths and `..` are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from accord.errors import ErrorCode, InvalidArgument
from accord.names import DNS_LABEL
from accord.resources.appimage import AppImage, AppPort
from accord.resources.job import AllocatedPort, Party

TOKEN_ANNOTATION = "accord/task-token-sha256"

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SIMPLE = re.compile(r"^\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*$")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def port_env_name(port_name: str) -> str:
    """`KUSCIA_PORT_<NAME>_NUMBER`, upper case with '-' turned into '_'."""
    return f"KUSCIA_PORT_{port_name.upper().replace('-', '_')}_NUMBER"


def service_name(task: str, port_name: str, role: str = "") -> str:
    """Kuscia's service name for a task party's port: `<task>-[<role>-]0-<port>`, a valid DNS label."""
    pod = f"{task}-{role}-0" if role else f"{task}-0"
    name = f"{pod}-{port_name}".lower()
    if name[0].isdigit():
        name = "svc-" + name
    if len(name) > 63 or not DNS_LABEL.match(name):
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = f"svc-{digest}"
    return name


def party_endpoints(
    task: str,
    party: Party,
    app_ports: Sequence[AppPort],
    allocated: Sequence[AllocatedPort] = (),
    *,
    is_self: bool = False,
) -> dict[str, str]:
    """Port name -> endpoint for one party (see the module docstring for the scope rules)."""
    numbers = {p.name: p.port for p in allocated}
    out: dict[str, str] = {}
    for port in app_ports:
        svc = service_name(task, port.name, party.role)
        if port.scope == "Cluster":
            out[port.name] = f"{svc}.{party.domain}.svc"
        elif port.scope == "Domain" and is_self and port.name in numbers:
            out[port.name] = f"{svc}.{party.domain}.svc:{numbers[port.name]}"
    return out


def cluster_define(
    task: str,
    parties: Sequence[Party],
    self_party_index: int,
    app_ports: Sequence[AppPort],
    allocated: Sequence[AllocatedPort] = (),
) -> dict[str, Any]:
    """The `TASK_CLUSTER_DEFINE` document."""
    if not 0 <= self_party_index < len(parties):
        raise InvalidArgument(
            f"self party index {self_party_index} is out of range for {len(parties)} parties",
            code=ErrorCode.TASK_INVALID,
        )
    out_parties = []
    for index, party in enumerate(parties):
        endpoints = party_endpoints(task, party, app_ports, allocated, is_self=index == self_party_index)
        out_parties.append(
            {
                "name": party.domain,
                "role": party.role,
                "services": [{"portName": name, "endpoints": [ep]} for name, ep in endpoints.items()],
            }
        )
    return {"parties": out_parties, "selfPartyIdx": self_party_index, "selfEndpointIdx": 0}


def allocated_ports_document(ports: Sequence[AllocatedPort]) -> dict[str, Any]:
    """The `ALLOCATED_PORTS` document."""
    return {
        "ports": [{"name": p.name, "port": p.port, "scope": p.scope, "protocol": p.protocol} for p in ports]
    }


def _compact(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def contract_variables(
    *,
    task: str,
    domain: str,
    input_config: str,
    parties: Sequence[Party],
    self_party_index: int,
    app_image: AppImage,
    ports: Sequence[AllocatedPort],
    node_api: str,
    token: str,
    work_dir: Path,
) -> dict[str, str]:
    """Every engine-contract variable (env and template values), without anything of the node's."""
    variables = {
        "TASK_ID": task,
        "TASK_INPUT_CONFIG": input_config,
        "TASK_CLUSTER_DEFINE": _compact(
            cluster_define(task, parties, self_party_index, app_image.spec.ports, ports)
        ),
        "ALLOCATED_PORTS": _compact(allocated_ports_document(ports)),
        "KUSCIA_DOMAIN_ID": domain,
        "ACCORD_NODE_API": node_api,
        "ACCORD_TASK_TOKEN": token,
        "ACCORD_WORK_DIR": str(work_dir),
    }
    for port in ports:
        variables[port_env_name(port.name)] = str(port.port)
    return variables


def render_template(template_name: str, text: str, variables: Mapping[str, str]) -> str:
    """Substitute `{{.NAME}}` placeholders; JSON-escape inside JSON strings; refuse anything else."""
    out: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        simple = _SIMPLE.match(match.group(1))
        if simple is None:
            raise InvalidArgument(
                f"config template {template_name!r}: unsupported expression {match.group(0)!r}; "
                "only {{.NAME}} substitution is supported",
                code=ErrorCode.APPIMAGE_INVALID,
            )
        name = simple.group(1)
        if name not in variables:
            raise InvalidArgument(
                f"config template {template_name!r} uses {{{{.{name}}}}}, which is not defined; "
                f"defined: {', '.join(sorted(variables))}",
                code=ErrorCode.APPIMAGE_INVALID,
            )
        value = variables[name]
        start, end = match.span()
        quoted = start > 0 and text[start - 1] == '"' and end < len(text) and text[end] == '"'
        out.append(text[pos:start])
        out.append(json.dumps(value)[1:-1] if quoted else value)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def safe_relative_path(base: Path, relative: str, what: str) -> Path:
    """`base / relative`, refusing absolute paths and any `..` so nothing lands outside `base`."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or relative.startswith("~"):
        raise InvalidArgument(
            f"{what} {relative!r} must be a relative path inside the task directory (no leading '/', "
            "no '..')",
            code=ErrorCode.APPIMAGE_INVALID,
        )
    return base.joinpath(*pure.parts)


def render_config_files(app_image: AppImage, variables: Mapping[str, str], work_dir: Path) -> list[Path]:
    """Render each mounted config template into the task dir; returns the files written.

    A template without a mount is written under its own name; a mount naming no template is an error.
    """
    spec = app_image.spec
    for template in spec.config_mounts:
        if template not in spec.config_templates:
            raise InvalidArgument(
                f"AppImage {app_image.meta.name!r}: config_mounts names template {template!r}, which is not "
                f"in config_templates ({', '.join(sorted(spec.config_templates)) or 'none'})",
                code=ErrorCode.APPIMAGE_INVALID,
            )
    rendered: list[tuple[Path, str]] = []
    for template, text in spec.config_templates.items():
        target = spec.config_mounts.get(template, template)
        path = safe_relative_path(work_dir, target, f"config mount path of template {template!r}")
        rendered.append((path, render_template(template, text, variables)))
    written = []
    for path, content in rendered:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        written.append(path)
    return written
