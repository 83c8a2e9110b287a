"""SPU's native PSI (libpsi: RR22, ECDH) as an Accord engine, run from SPU's own environment.

    <engines dir>/spu-0.9.5/bin/python -m accord.engines.spu_psi      (the `spu-psi` AppImage)

Modules: `__main__.py` (a stdlib-only guard: runs the party process, turns a native crash into a
one-line reason and cleans up after it), `party.py` (the party process: exit codes, SIGTERM),
`engine.py` (one party from the engine contract to `<task id>-output`), `config.py` (THE psi task
config as this engine accepts it; importable by the node), `table.py` (libpsi's input file and the
aligned output; pyarrow only), `link.py` (the yacl link in blackbox mode through the gateway's PTP
transport, the hello/fin control messages), `native.py` (SPU's libspu and libpsi, without jax),
`files.py` (private files and libpsi's trace files).  Only `native.py` loads `spu`, when `link.py` or
`engine.py` first needs it; this `__init__` imports nothing, so the node can use `config` without SPU
installed.
"""
