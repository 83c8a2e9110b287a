"""The node-to-node protocol (DESIGN.md sections 2 and 7): how nodes agree on and run cross-domain jobs.

    messages.py   the versioned messages and the annotations/labels they leave on mirrored objects
    client.py     PeerClient: send a message to a peer through the local gateway's egress; SendBook
    server.py     the interop API every node serves as `accord.<domain>.svc`; who the sender is
    jobs.py       JobInbox: proposals (validation, approval policies, mirrors), syncs, reports, deletes
    commands.py   stage commands with Kuscia's guards, and a participant's approval decision
    common.py     helpers shared by all of the above

The sending side lives in the controllers (`controllers/job.py`, `jobpeers.py`, `task.py`), which derive
what to send from the store; the task-level receiving side (`controllers/inbox.py`) needs the runtime and
the gateway registry, which this layer may not import.
"""
