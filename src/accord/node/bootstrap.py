"""`accord node init`: create a node directory (config, domain identity, API token).

A node directory holds everything that identifies the domain: `accord.toml` (settings), `domain.key`
(private key, 0600), `domain.crt` (the certificate peers pin) and `token` (the local API token, 0600).
Init refuses to overwrite an existing identity unless `force` is given, because replacing the key makes
every peer's pinned certificate stale (their routes turn Unauthorized).
"""

from __future__ import annotations

import os
from pathlib import Path

from accord.errors import AlreadyExists, InvalidArgument
from accord.kms.identity import generate_identity, new_token, write_private
from accord.names import check_dns_label
from accord.settings import CONFIG_FILE, NodeSettings, load_settings


def init_node_dir(
    *,
    domain: str,
    directory: Path,
    api_port: int | None = None,
    gateway_port: int | None = None,
    egress_port: int | None = None,
    datamesh_port: int | None = None,
    force: bool = False,
) -> NodeSettings:
    """Write config, key pair, certificate and API token; return the loaded settings."""
    try:
        check_dns_label(domain, "domain")
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    node_dir = Path(directory).expanduser().resolve()
    config = node_dir / CONFIG_FILE
    if config.exists() and not force:
        raise AlreadyExists(
            f"{node_dir} is already an Accord node directory; use --force to replace its identity "
            "(peers will have to pin the new certificate)"
        )
    node_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(node_dir, 0o700)
    values: dict[str, object] = {"domain": domain, "dir": node_dir}
    for name, value in (
        ("api_port", api_port),
        ("gateway_port", gateway_port),
        ("egress_port", egress_port),
        ("datamesh_port", datamesh_port),
    ):
        if value is not None:
            values[name] = value
    settings = NodeSettings.model_validate(values)
    key_pem, cert_pem = generate_identity(domain)
    write_private(settings.key_path, key_pem)
    settings.cert_path.write_bytes(cert_pem)
    write_private(settings.token_path, new_token().encode())
    for sub in (settings.tasks_dir, settings.data_dir, settings.logs_dir):
        sub.mkdir(parents=True, exist_ok=True)
    tmp = config.with_name(CONFIG_FILE + ".tmp")
    tmp.write_text(settings.to_toml())
    os.replace(tmp, config)
    return load_settings(node_dir, env={})


def read_token(settings: NodeSettings) -> str:
    try:
        return settings.token_path.read_text().strip()
    except FileNotFoundError as exc:
        raise InvalidArgument(
            f"{settings.token_path} is missing: run `accord node init` for this directory"
        ) from exc
