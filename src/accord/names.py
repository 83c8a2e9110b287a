"""Name rules shared by every layer: DNS labels (RFC 1123), as Kubernetes and Kuscia use them.

Names become host names (`<service>.<domain>.svc`), file names and label values, so one rule serves all.
"""

from __future__ import annotations

import re

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_dns_label(value: str, what: str = "name") -> str:
    """Return `value` if it is a valid DNS label, else raise ValueError saying why."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > 63:
        raise ValueError(f"{what} {value!r} is {len(value)} characters long; at most 63 allowed")
    if not DNS_LABEL.match(value):
        raise ValueError(
            f"{what} {value!r} is not a DNS label: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value
