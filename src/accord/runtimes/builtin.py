"""The AppImages of the engines that ship inside the package (created by the node at start).

Why built-in AppImages are generated, not stored as YAML: their command is the node's own Python
(`sys.executable` of the running node), which only the node knows, so the node calls
`builtin_appimages(sys.executable)` at start and creates (or refreshes) them in its store.  They carry
the label `accord/builtin=true` so users can tell them from their own.
"""

from __future__ import annotations

from accord.resources.appimage import AppImage, AppImageSpec, AppPort, ImageRef, ResourceNeeds
from accord.resources.meta import ObjectMeta
from accord.runtimes.engines import engine_appimages

BUILTIN_LABEL = "accord/builtin"


def _engine(
    name: str,
    module: str,
    python: str,
    *,
    version: str = "0.1.0",
    ports: list[AppPort] | None = None,
    resources: ResourceNeeds | None = None,
) -> AppImage:
    return AppImage(
        meta=ObjectMeta(name=name, labels={BUILTIN_LABEL: "true"}),
        spec=AppImageSpec(
            image=ImageRef(name=f"accord/{name}", tag=version),
            command=[python, "-m", module],
            ports=list(ports or []),
            resources=resources or ResourceNeeds(),
        ),
    )


def builtin_appimages(python: str) -> list[AppImage]:
    """AppImages of the built-in engines, run with the interpreter `python`.

    Engines with their own environment (`spu-psi`) run with that environment's interpreter instead;
    their AppImages exist whether the environment is installed or not (`runtimes/engines.py`).
    """
    images = [
        _engine("hello", "accord.engines.hello", python),
        # The built-in two-party PSI (ECDH over X25519): its peer reaches it on port `psi` through the
        # gateway; 2 GiB covers a 1,000,000-row party (measured peak about 0.56 GB).
        _engine(
            "psi",
            "accord.engines.psi",
            python,
            ports=[AppPort(name="psi", protocol="HTTP", scope="Cluster")],
            resources=ResourceNeeds(cpu="2", memory="2Gi"),
        ),
    ]
    for image in engine_appimages():
        image.meta.labels[BUILTIN_LABEL] = "true"
        images.append(image)
    return images
