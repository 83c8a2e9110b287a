"""SPU's native PSI (libpsi: RR22, ECDH) as an Accord engine, run from SPU's own environment.

    <engines dir>/spu-0.9.5/bin/python -m accord.engines.spu_psi      (the `spu-psi` AppImage)

Modules: `config.py` (THE psi task config as this engine accepts it; importable by the node),
`table.py` (libpsi's input file and the aligned output; pyarrow only), `link.py` (the yacl link in
blackbox mode through the gateway's PTP transport, and the hello/fin control messages), `engine.py`
(one party from the engine contract to `<task id>-output`).  Only `link.py` and `engine.py` import
`spu`, lazily; this `__init__` imports nothing, so the node can use `config` without SPU installed.
"""
