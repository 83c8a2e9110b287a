"""A PTP "engine" process, like SPU/yacl in blackbox link mode: it listens on nothing, pushes messages to
its peer and long-polls for the peer's messages, all through its own node's egress port.

`python ptp_engine.py EGRESS_PORT SELF PEER SESSION MESSAGES MESSAGE_BYTES` prints one JSON line with the
bytes sent and received; every received message is checked (order and content).
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

from accord.gateway.ptp import OK, QUEUE_FULL, decode_outbound


def message(seq: int, size: int) -> bytes:
    return seq.to_bytes(8, "big") + bytes([seq % 251]) * (size - 8)


def call(
    conn: http.client.HTTPConnection, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[bytes, str]:
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    assert response.status == 200, (response.status, data[:200])
    payload, code, text = decode_outbound(data)
    if code not in (OK, QUEUE_FULL):
        raise RuntimeError(f"{path}: {code} {text}")
    return payload, code


def main() -> None:
    port, me, peer, session = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    count, size = int(sys.argv[5]), int(sys.argv[6])
    base = {"x-ptp-session-id": session, "x-ptp-source-node-id": me, "x-ptp-target-node-id": peer}
    result = {"sent": 0, "received": 0, "queue_full": 0, "error": ""}

    def push() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {**base, "x-ptp-topic": f"{me}-{peer}", "Content-Type": "application/x-protobuf"}
        for seq in range(count):
            while True:
                _, code = call(conn, "/v1/interconn/chan/push?timeout=5", headers, message(seq, size))
                if code == OK:
                    break
                result["queue_full"] += 1
                time.sleep(0.05)
            result["sent"] += size

    def pop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {**base, "x-ptp-topic": f"{peer}-{me}"}
        seq = 0
        while seq < count:
            payload, _ = call(conn, "/v1/interconn/chan/pop?timeout=1", headers)
            if not payload:
                continue
            if payload != message(seq, size):
                raise AssertionError(f"message {seq} from {peer} is wrong or out of order")
            result["received"] += len(payload)
            seq += 1

    def guarded(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                result["error"] = f"{fn.__name__}: {exc!r}"

        return run

    threads = [threading.Thread(target=guarded(push)), threading.Thread(target=guarded(pop))]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    result["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
