"""`accord domain add|list|delete`: the peers this node knows, each pinned by its certificate.

Adding a partner Domain is the out-of-band half of trust (Kuscia's partner Domain): the administrator
received `bob.crt` from bob's administrator by a channel they trust, and `accord domain add bob --cert
bob.crt` pins it.  From then on the gateway accepts connections presenting exactly that certificate as
bob, and nothing else; deleting the Domain refuses bob at once, open connections included.

The certificate is checked here, before it is sent, so a wrong file fails with a clear message, and
the fingerprint is printed so both administrators can compare it by phone (`openssl x509 -noout
-fingerprint -sha256 -in bob.crt` shows the same value, with colons).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from accord.cli.common import NodeDirOption, client_for, errors_reported, fail, stdout_console
from accord.cli.output import OutputFormat, age, print_documents, print_table
from accord.errors import AccordError, ErrorCode, NotFound
from accord.kms.identity import common_name, fingerprint, load_certificate
from accord.names import check_dns_label

app = typer.Typer(help="Peer domains and their pinned certificates.", no_args_is_help=True)

KIND = "Domain"


def items(listing: Any) -> list[dict[str, Any]]:
    """The objects of a `client.list` answer (`{"items": [...], "revision": n}`, or a bare list)."""
    found = listing.get("items", []) if isinstance(listing, dict) else listing
    return [doc for doc in found if isinstance(doc, dict)]


def _fingerprint(doc: dict[str, Any]) -> str:
    cert = str((doc.get("spec") or {}).get("cert") or "")
    if not cert.strip():
        return "-"
    try:
        return fingerprint(cert)
    except AccordError:
        return "(invalid certificate)"


def colon_fingerprint(hex_digest: str) -> str:
    """`AB:CD:...` as openssl prints it."""
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="the peer's domain id (a DNS label)")],
    cert: Annotated[Path, typer.Option("--cert", help="the peer's certificate (PEM), received out of band")],
    replace: Annotated[
        bool, typer.Option("--replace", help="replace the certificate of an existing Domain")
    ] = False,
    directory: NodeDirOption = None,
) -> None:
    """Pin a peer domain's certificate (a partner Domain)."""
    with errors_reported():
        try:
            check_dns_label(name, "domain")
        except ValueError as exc:
            fail(str(exc), code=ErrorCode.DOMAIN_INVALID)
        try:
            pem = cert.expanduser().read_text()
        except OSError as exc:
            fail(f"cannot read certificate {cert}: {exc.strerror or exc}", code=ErrorCode.DOMAIN_INVALID)
        parsed = load_certificate(pem)
        cn = common_name(parsed)
        doc = {"kind": KIND, "meta": {"name": name}, "spec": {"role": "partner", "cert": pem}}
        with client_for(directory) as client:
            if replace:
                try:
                    client.delete(KIND, name)
                except NotFound:
                    pass
            client.create(doc)
        out = stdout_console()
        out.print(f"domain {name} added as a partner; pinned certificate:", markup=False)
        out.print(f"  SHA-256 {colon_fingerprint(fingerprint(parsed))}", markup=False)
        if cn and cn != name:
            out.print(f"  note: the certificate's subject CN is {cn!r}, not {name!r}", markup=False)


@app.command("list")
def list_(
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="table, yaml or json")
    ] = OutputFormat.TABLE,
    directory: NodeDirOption = None,
) -> None:
    """This node's own Domain and the partner domains it pins."""
    with errors_reported(), client_for(directory) as client:
        docs = items(client.list(KIND))
    if output is not OutputFormat.TABLE or not docs:
        print_documents(KIND, docs, output, single=False)
        return
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in ("NAME", "ROLE", "FINGERPRINT", "AGE"):
        table.add_column(header, no_wrap=True)
    for doc in docs:
        role = str((doc.get("spec") or {}).get("role") or "") or "self"
        fp = _fingerprint(doc)
        table.add_row(str(doc["meta"]["name"]), role, fp[:16] + "..." if len(fp) == 64 else fp, age(doc))
    print_table(table)


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="the peer domain to forget")],
    directory: NodeDirOption = None,
) -> None:
    """Remove a partner Domain: its connections are refused from now on."""
    with errors_reported(), client_for(directory) as client:
        client.delete(KIND, name)
    stdout_console().print(f"domain {name} deleted; its connections are refused from now on", markup=False)
