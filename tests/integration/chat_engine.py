"""`chat`: a tiny multi-party engine that really talks to its peers through the gateway egress.

Every party serves `GET /hello` on its allocated port `msg` and greets every other party at the endpoint
TASK_CLUSTER_DEFINE gives for it (`<task>-0-msg.<peer>.svc`), by plain HTTP to `$ACCORD_EGRESS` with that
Host.  The answer names who answered and whom the peer's gateway said was asking (the authenticated
`X-Accord-Source-Domain`).  A party finishes once it got an answer from every peer *and* was greeted by
every peer (so nobody exits before its peers are done with it), then writes `result.json`.

Knobs in TASK_INPUT_CONFIG, each either a value for every party or a `{domain: value}` map:
`exit_code` (exit with it after the exchange), `sleep` (seconds, after the exchange), `hang` (true: never
serve nor greet; sleep until killed), `connect_timeout` (seconds to wait for peers; default 60).

Standard library only, run by file path (`python chat_engine.py`), so it needs nothing from the test tree.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SOURCE_HEADER = "X-Accord-Source-Domain"


def knob(config: dict[str, Any], name: str, me: str, default: Any) -> Any:
    value = config.get(name, default)
    if isinstance(value, dict):
        return value.get(me, default)
    return value


def main() -> int:
    me = os.environ["KUSCIA_DOMAIN_ID"]
    cluster = json.loads(os.environ["TASK_CLUSTER_DEFINE"])
    ports = json.loads(os.environ["ALLOCATED_PORTS"])["ports"]
    egress = os.environ["ACCORD_EGRESS"]
    config = json.loads(os.environ.get("TASK_INPUT_CONFIG") or "{}")
    if knob(config, "hang", me, False):
        print(f"chat: {me} hangs on purpose", flush=True)
        time.sleep(3600)
    port = next(p["port"] for p in ports if p["name"] == "msg")
    greeted: set[str] = set()
    lock = threading.Lock()

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            source = self.headers.get(SOURCE_HEADER, "?")
            body = json.dumps({"from": me, "asked_by": source}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            with lock:
                greeted.add(source)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    peers = [
        (party["name"], service["endpoints"][0])
        for party in cluster["parties"]
        if party["name"] != me
        for service in party["services"]
        if service["portName"] == "msg" and service["endpoints"]
    ]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + float(knob(config, "connect_timeout", me, 60))
    answers: dict[str, Any] = {}
    for name, endpoint in peers:
        while True:
            try:
                request = urllib.request.Request(f"{egress}/hello", headers={"Host": endpoint})
                with opener.open(request, timeout=5) as response:
                    answers[name] = json.loads(response.read())
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    print(f"chat: {me}: peer {name} never answered ({exc})", file=sys.stderr, flush=True)
                    return 4
                time.sleep(0.05)
    expected = {name for name, _ in peers}
    while True:
        with lock:
            if expected <= greeted:
                break
        if time.monotonic() > deadline:
            print(f"chat: {me}: not greeted by {sorted(expected - greeted)}", file=sys.stderr, flush=True)
            return 5
        time.sleep(0.05)
    time.sleep(float(knob(config, "sleep", me, 0)))
    result = {"me": me, "answers": answers, "greeted_by": sorted(greeted)}
    work_dir = os.environ.get("ACCORD_WORK_DIR") or "."
    with open(os.path.join(work_dir, "result.json"), "w") as fh:
        json.dump(result, fh)
    print(f"chat: {me} done: {json.dumps(result)}", flush=True)
    server.shutdown()
    return int(knob(config, "exit_code", me, 0))


if __name__ == "__main__":
    sys.exit(main())
