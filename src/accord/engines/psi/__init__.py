"""The built-in two-party PSI engine: ECDH over X25519, sharded across processes, streamed over HTTP.

Run as `python -m accord.engines.psi` under the engine contract (see `engine.py`); the task config is
documented in `config.py`, the cryptography in `crypto.py`, the rounds in `protocol.py`, the wire in
`transport.py`, data access in `io.py`.

This package's `__init__` imports nothing on purpose: the worker processes import
`accord.engines.psi.workers` and should not pay for pyarrow or pydantic.
"""
