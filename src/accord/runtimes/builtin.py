"""The AppImages of the engines that ship inside the package (created by the node at start).

Why built-in AppImages are generated, not stored as YAML: their command is the node's own Python
(`sys.executable` of the running node), which only the node knows, so the node calls
`builtin_appimages(sys.executable)` at start and creates (or refreshes) them in its store.  They carry
the label `accord/builtin=true` so users can tell them from their own.
"""

from __future__ import annotations

from accord.resources.appimage import AppImage, AppImageSpec, ImageRef
from accord.resources.meta import ObjectMeta

BUILTIN_LABEL = "accord/builtin"


def _engine(name: str, module: str, python: str, *, version: str = "0.1.0") -> AppImage:
    return AppImage(
        meta=ObjectMeta(name=name, labels={BUILTIN_LABEL: "true"}),
        spec=AppImageSpec(
            image=ImageRef(name=f"accord/{name}", tag=version),
            command=[python, "-m", module],
        ),
    )


def builtin_appimages(python: str) -> list[AppImage]:
    """AppImages of the built-in engines, run with the interpreter `python`."""
    return [
        _engine("hello", "accord.engines.hello", python),
    ]
