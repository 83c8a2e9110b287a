"""SPU's two native modules, loaded without the `spu` package's `__init__`.

`import spu` (and so `import spu.libspu` or `from spu import psi`) runs `spu/__init__.py`, which imports
jax, numpy, ml_dtypes and SPU's compiler front end: 0.2-0.45 s of CPU and about 100 MB of RSS per party,
for nothing this engine uses.  The engine needs two extension modules only: `spu.libspu` (yacl's link)
and `spu.libpsi` (`psi_execute` and its config types; `spu.psi` merely re-exports them).  `load()`
loads those two straight from the installed package's directory, under their usual names, and runs
the CPU-feature check `spu/__init__.py` would have run (about 30 ms in all).  If the package does not
have that layout (not the SPU version `accord engine install spu` installs), it falls back to the
ordinary import.  Thread-safe: the link thread calls it first, `psi_execute` later.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "spu"


@dataclass(frozen=True)
class Natives:
    libspu: Any  # spu.libspu: link.Desc, link.create_brpc, _check_cpu_features
    libpsi: Any  # spu.libpsi: psi_execute, PsiExecuteConfig, ...


_lock = threading.Lock()
_loaded: Natives | None = None


def load() -> Natives:
    """`spu.libspu` and `spu.libpsi` (loaded once); ImportError if SPU is not installed."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _load() -> Natives:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise ImportError(f"No module named {PACKAGE!r}", name=PACKAGE)
    locations = list(spec.submodule_search_locations or [])
    paths = {name: _extension(locations, name) for name in ("libspu", "libpsi")}
    if PACKAGE in sys.modules or None in paths.values():
        from spu import libspu
        from spu import psi as libpsi

        return Natives(libspu, libpsi)
    libspu = _load_extension("libspu", paths["libspu"])
    libpsi = _load_extension("libpsi", paths["libpsi"])
    libspu._check_cpu_features()
    return Natives(libspu, libpsi)


def _extension(locations: list[str], name: str) -> Path | None:
    for location in locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(location) / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def _load_extension(name: str, path: Path | None) -> Any:
    full = f"{PACKAGE}.{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {full} from {path}", name=full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[full] = module  # a later `import spu` (not by this engine) then finds it loaded
    return module
