"""The gateway: one mTLS port per node, Host routing, engine egress, tunnels and transit (DESIGN.md 3).

Modules, one responsibility each:

    gateway.py    Gateway: wires everything to the store and the service registry; lifecycle
    public.py     the public port: TLS identity, Host routing, handshake and transit hosts
    egress.py     the loopback egress port: engines' plain HTTP and CONNECT to peers
    local.py      the last hop to a local engine (source header, path prefix, tunnels)
    forward.py    one HTTP exchange over a link, streaming both ways; splicing tunnels
    links.py      dialling peers (direct or through transit, pinned) and pooling links
    handshake.py  the route handshake and health probe (mTLS and token modes)
    tokens.py     token authentication: agreeing, sealing, signing, verifying, replay protection
    ptp.py        the BFIA transport: push/pop queues per session and topic
    table.py      RoutingTable: pinned peers and routes, followed from the store
    registry.py   ServiceRegistry: which local services which peers may reach
    tls.py        TLS 1.3 contexts and certificate pinning
    http1.py      strict HTTP/1.1 parsing and body framing (request smuggling stops here)
    stream.py     a connection hop with read-ahead; the body fast path
    refusals.py   typed refusals and how they are rendered (`X-Accord-Error`)
    tracking.py   open connections by peer and service, for revocation
    hosts.py      `<service>.<domain>.svc`
    standalone.py a gateway process without a node (namespace tests, benchmarks)
"""

from accord.gateway.gateway import Gateway, GatewayConfig
from accord.gateway.handshake import ProbeResult, probe
from accord.gateway.registry import ANY_PEER, ServiceEntry, ServiceRegistry

__all__ = ["ANY_PEER", "Gateway", "GatewayConfig", "ProbeResult", "ServiceEntry", "ServiceRegistry", "probe"]
