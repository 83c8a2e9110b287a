"""Engine environments: heavy engines run from their own Python environment, one per machine.

Why: SPU 0.9.5 pins numpy<2 and jax 0.4.34, weighs about 1 GB and costs 300 MB of RSS just to import.
It must never meet the node's dependencies (numpy 2, pyarrow, ...), so it gets its own venv and its
AppImage's command is that venv's interpreter (DESIGN.md section 4).  The node never imports it.

Where: `<engines dir>/<name>-<version>/`, a venv; the engines dir is `$ACCORD_ENGINES_DIR`, else
`$XDG_DATA_HOME/accord/engines`, else `~/.local/share/accord/engines`.  Per machine, not per node: two
nodes on one machine (the demo, the tests) share one 1 GB install.

What goes in (`ENGINES`): the engine's own pins (`spu==0.9.5`) plus what `accord.engines` needs there --
pyarrow (DataMesh over Arrow Flight), httpx (progress reports), pydantic (the shared psi config) -- at
the node's own versions, so the engine code behaves the same in both environments; pip resolves them
together with spu's pins (pyarrow has no numpy requirement, so numpy stays <2).

The `accord` code in the venv is a symlink `site-packages/accord -> <the installing accord package>`,
not a copy (`pip install --no-deps accord` would need a build and would freeze a snapshot): the engine
always runs the same accord code as the node that starts it, a source checkout included, and only the
`accord` package becomes visible (never the node's site-packages).  Running `accord engine install`
again re-points it, e.g. after moving the checkout; `engine_problem` reports a dangling link.

Install is atomic and idempotent: under a per-engine file lock the venv is built in a hidden temp dir
next to its final place (`python -m venv`, `pip install`, the accord link, an import smoke test that
also checks the engine's version), then the manifest `accord-engine.json` is written and the dir is
renamed into place.  A failure or a kill leaves at most a hidden temp dir, removed by the next install;
an environment without a manifest is never taken for an installed one.  (The rename means the console
scripts in `bin/` carry the temp path in their shebang; the engine is always run as `bin/python -m`,
and pip as `bin/python -m pip`.)

At prepare, the task controller calls `engine_problem(app_image, domain)`: an AppImage that needs an
engine environment (label `accord/engine-env`, or a command whose interpreter lives in the engines dir)
whose environment is missing fails the task with "engine spu not installed on DOMAIN: run accord
engine install spu".  `engine_read_only_paths` lists what a sandbox must expose read-only for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accord.errors import AccordError, ErrorCode, InvalidArgument, NotFound
from accord.resources.appimage import AppImage, AppImageSpec, ImageRef, ResourceNeeds
from accord.resources.meta import ObjectMeta

ENGINES_DIR_ENV = "ACCORD_ENGINES_DIR"
MANIFEST = "accord-engine.json"
ENGINE_LABEL = "accord/engine-env"
"""AppImage label naming the engine environment it runs from (e.g. `spu`)."""

Output = Callable[[str], None]


@dataclass(frozen=True)
class EngineSpec:
    """An installable engine environment."""

    name: str
    version: str
    requirements: tuple[str, ...]
    companions: tuple[str, ...]  # distributions pinned to the node's own versions ...
    below_major: Mapping[str, int]  # ... unless that version is too new for the engine's pins
    module: str  # what the AppImage runs with `python -m`
    app_image: str
    smoke_imports: tuple[str, ...]
    version_module: str  # `<module>.__version__` must equal `version`
    report_packages: tuple[str, ...]
    description: str = ""
    resources: ResourceNeeds = field(default_factory=ResourceNeeds)

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.version}"


ENGINES: dict[str, EngineSpec] = {
    "spu": EngineSpec(
        name="spu",
        version="0.9.5",
        requirements=("spu==0.9.5",),
        companions=("pyarrow", "httpx", "pydantic"),
        # pyarrow 26 refuses to import next to numpy 1.x (spu pins numpy<2); 25 is the newest that works
        below_major={"pyarrow": 26},
        module="accord.engines.spu_psi",
        app_image="spu-psi",
        smoke_imports=(
            "spu",
            "spu.psi",
            "spu.libspu",
            "pyarrow.flight",
            "accord.engines.spu_psi.engine",
        ),
        version_module="spu",
        report_packages=("spu", "jax", "jaxlib", "numpy", "pyarrow", "httpx", "pydantic"),
        description="SPU's native PSI (libpsi: RR22, ECDH-Curve25519), run as the spu-psi AppImage",
        # 1M x 1M RR22 peaks at about 0.8 GB per party (shared/reference/engines.md Q1)
        resources=ResourceNeeds(cpu="2", memory="2Gi"),
    ),
}


class EngineNotInstalled(NotFound):
    """An engine environment a task needs is missing on this machine."""

    default_code = ErrorCode.APPIMAGE_NOT_FOUND


class EngineInstallError(AccordError):
    """Creating an engine environment failed (nothing was left behind)."""


def engines_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    explicit = env.get(ENGINES_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    data_home = env.get("XDG_DATA_HOME", "").strip()
    base = Path(data_home).expanduser() if data_home else Path.home() / ".local" / "share"
    return base / "accord" / "engines"


def spec_of(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown engine {name!r}; this Accord can install: {', '.join(sorted(ENGINES))}"
        ) from None


def env_path(spec: EngineSpec, root: Path | None = None) -> Path:
    return (root or engines_dir()) / spec.dir_name


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def accord_package() -> Path:
    """The directory of the `accord` package this process runs."""
    import accord

    return Path(accord.__file__).resolve().parent


@dataclass(frozen=True)
class InstalledEngine:
    name: str
    version: str
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return venv_python(self.path)

    @property
    def packages(self) -> dict[str, str]:
        return dict(self.manifest.get("packages", {}))

    @property
    def accord_link(self) -> Path | None:
        raw = self.manifest.get("accord_link")
        return Path(raw) if raw else None


def read_installed(venv: Path) -> tuple[InstalledEngine | None, str]:
    """The environment at `venv` if it is complete, else (None, why not)."""
    try:
        manifest = json.loads((venv / MANIFEST).read_text())
    except FileNotFoundError:
        return None, f"{venv} does not exist" if not venv.exists() else f"{venv} has no {MANIFEST}"
    except (OSError, ValueError) as exc:
        return None, f"{venv / MANIFEST} is unreadable: {exc}"
    if not isinstance(manifest, dict) or not manifest.get("engine"):
        return None, f"{venv / MANIFEST} is not an engine manifest"
    if not venv_python(venv).exists():
        return None, f"{venv_python(venv)} is missing (its base interpreter may have moved)"
    link = manifest.get("accord_link")
    if link and not (Path(link) / "__init__.py").exists():
        engine = manifest["engine"]
        return None, f"the accord code it runs ({link}) is gone: run accord engine install {engine}"
    return InstalledEngine(str(manifest["engine"]), str(manifest.get("version", "")), venv, manifest), ""


def installed_engine(name: str, root: Path | None = None) -> InstalledEngine | None:
    found, _ = read_installed(env_path(spec_of(name), root))
    return found


@dataclass(frozen=True)
class EngineListing:
    name: str
    version: str
    path: Path
    installed: InstalledEngine | None
    problem: str
    description: str = ""


def list_engines(root: Path | None = None) -> list[EngineListing]:
    """Every engine this Accord knows (installed or not), plus other installed environments found."""
    base = root or engines_dir()
    rows: list[EngineListing] = []
    seen: set[Path] = set()
    for spec in ENGINES.values():
        path = env_path(spec, base)
        seen.add(path)
        found, problem = read_installed(path)
        rows.append(EngineListing(spec.name, spec.version, path, found, problem, spec.description))
    if base.is_dir():
        for entry in sorted(base.iterdir()):
            if entry in seen or entry.name.startswith(".") or not (entry / MANIFEST).exists():
                continue
            found, problem = read_installed(entry)
            name = found.name if found else entry.name
            rows.append(EngineListing(name, found.version if found else "", entry, found, problem))
    return rows


# -- install -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path, say: Output) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another install of the same engine ({path})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(argv: list[str], say: Output, *, what: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Run a command, streaming its output lines to `say`; EngineInstallError with the tail if it fails."""
    tail: deque[str] = deque(maxlen=25)
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(env) if env is not None else None,
        )
    except OSError as exc:
        raise EngineInstallError(f"{what} failed: cannot run {argv[0]}: {exc}") from exc
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                lines.append(line)
                say(line)
        code = proc.wait()
    if code != 0:
        detail = "\n  ".join(tail)
        raise EngineInstallError(f"{what} failed (exit code {code}):\n  {detail}")
    return lines


def companion_pins(spec: EngineSpec) -> list[str]:
    """`dist==<node's version>` for each companion, or `dist<N` when the node's is too new for the engine."""
    pins = []
    for dist in spec.companions:
        limit = spec.below_major.get(dist)
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pins.append(f"{dist}<{limit}" if limit else dist)
            continue
        major = version.split(".", 1)[0]
        if limit is not None and (not major.isdigit() or int(major) >= limit):
            pins.append(f"{dist}<{limit}")
        else:
            pins.append(f"{dist}=={version}")
    return pins


def _link_accord(venv: Path, say: Output) -> Path:
    purelib = subprocess.run(
        [str(venv_python(venv)), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = accord_package()
    link = Path(purelib) / "accord"
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == target:
            return target
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    link.symlink_to(target, target_is_directory=True)
    say(f"linked the accord code: {link} -> {target}")
    return target


def _smoke(venv: Path, spec: EngineSpec) -> dict[str, str]:
    script = (
        "import importlib, importlib.metadata as m, json\n"
        f"for name in {list(spec.smoke_imports)!r}: importlib.import_module(name)\n"
        f"version = importlib.import_module({spec.version_module!r}).__version__\n"
        "packages = {}\n"
        f"for dist in {list(spec.report_packages)!r}:\n"
        "    try: packages[dist] = m.version(dist)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps({'version': version, 'packages': packages}))\n"
    )
    done = subprocess.run(
        [str(venv_python(venv)), "-I", "-c", script], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        tail = "\n  ".join(done.stderr.strip().splitlines()[-12:])
        raise EngineInstallError(f"the new {spec.name} environment does not import:\n  {tail}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["version"] != spec.version:
        raise EngineInstallError(
            f"the new environment has {spec.version_module} {result['version']}, expected {spec.version}"
        )
    return dict(result["packages"])


def install_engine(
    name: str,
    *,
    root: Path | None = None,
    python: str | None = None,
    force: bool = False,
    say: Output | None = None,
    tool_output: Output | None = None,
    pip_args: tuple[str, ...] = (),
) -> InstalledEngine:
    """Create (or find) the environment of engine `name`; see the module docstring.

    `say` receives one line per step; `tool_output` every line venv and pip print.
    """
    spec = spec_of(name)
    out: Output = say or (lambda line: None)
    tools: Output = tool_output or (lambda line: None)
    base = root or engines_dir()
    final = env_path(spec, base)
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f".{spec.dir_name}.lock", out):
        existing, _ = read_installed(final)
        if existing is not None and not force:
            link = _link_accord(final, out)
            if existing.accord_link != link:
                manifest = {**existing.manifest, "accord_link": str(link)}
                _write_manifest(final, manifest)
                existing = InstalledEngine(existing.name, existing.version, final, manifest)
            out(f"engine {spec.name} {spec.version} is already installed at {final}")
            return existing
        for stale in base.glob(f".{spec.dir_name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        temp = base / f".{spec.dir_name}.tmp-{os.getpid()}"
        started = time.monotonic()
        try:
            interpreter = python or sys.executable
            out(f"creating the environment ({interpreter} -m venv)")
            _run([interpreter, "-m", "venv", str(temp)], tools, what="creating the venv")
            requirements = [*spec.requirements, *companion_pins(spec)]
            out(f"installing {' '.join(requirements)} (spu brings jax and jaxlib: about 160 MB to download)")
            pip = [str(venv_python(temp)), "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
            _run([*pip, *pip_args, *requirements], tools, what="pip install")
            link = _link_accord(temp, out)
            out("checking that the environment imports (import spu takes a second)")
            packages = _smoke(temp, spec)
            manifest = {
                "engine": spec.name,
                "version": spec.version,
                "module": spec.module,
                "requirements": requirements,
                "packages": packages,
                "python": subprocess.run(
                    [str(venv_python(temp)), "-c", "import platform; print(platform.python_version())"],
                    capture_output=True,
                    text=True,
                ).stdout.strip(),
                "accord_link": str(link),
                "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "install_seconds": round(time.monotonic() - started, 1),
            }
            _write_manifest(temp, manifest)
            if final.exists() or final.is_symlink():
                old = base / f".{spec.dir_name}.tmp-old-{os.getpid()}"
                final.rename(old)
                temp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                temp.rename(final)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        installed, problem = read_installed(final)
        if installed is None:
            raise EngineInstallError(f"engine {spec.name} was installed but does not check out: {problem}")
        out(f"engine {spec.name} {spec.version} installed at {final} in {manifest['install_seconds']} s")
        return installed


def _write_manifest(venv: Path, manifest: dict[str, Any]) -> None:
    tmp = venv / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, venv / MANIFEST)


# -- what the node uses ------------------------------------------------------------------------------


def engine_app_image(spec: EngineSpec, root: Path | None = None) -> AppImage:
    """The AppImage of an engine environment; its command is the venv's interpreter (installed or not)."""
    return AppImage(
        meta=ObjectMeta(name=spec.app_image, labels={ENGINE_LABEL: spec.name}),
        spec=AppImageSpec(
            image=ImageRef(name=f"accord/{spec.app_image}", tag=spec.version),
            command=[str(venv_python(env_path(spec, root))), "-m", spec.module],
            resources=spec.resources,
        ),
    )


def engine_appimages(root: Path | None = None) -> list[AppImage]:
    """The AppImages of every installable engine (seeded with the built-in ones)."""
    return [engine_app_image(spec, root) for spec in ENGINES.values()]


def _venv_of_command(app: AppImage) -> Path | None:
    command = app.spec.command
    if not command:
        return None
    interpreter = Path(command[0])
    if not interpreter.is_absolute() or interpreter.parent.name != "bin":
        return None
    return interpreter.parent.parent


def required_engine(app: AppImage, root: Path | None = None) -> str | None:
    """The engine environment an AppImage runs from, if any."""
    label = app.meta.labels.get(ENGINE_LABEL)
    if label:
        return label
    venv = _venv_of_command(app)
    if venv is None:
        return None
    base = root or engines_dir()
    for spec in ENGINES.values():
        if venv == env_path(spec, base):
            return spec.name
    return None


def engine_problem(app: AppImage, domain: str, *, root: Path | None = None) -> str | None:
    """Why this node cannot run `app` (its engine environment is missing), or None if it can."""
    name = required_engine(app, root)
    if name is None:
        return None
    if name not in ENGINES:
        return (
            f"AppImage {app.meta.name!r} needs engine {name!r}, which this Accord cannot install "
            f"(known: {', '.join(sorted(ENGINES))})"
        )
    venv = _venv_of_command(app) or env_path(ENGINES[name], root)
    found, _ = read_installed(venv)
    if found is None:
        return f"engine {name} not installed on {domain}: run accord engine install {name}"
    return None


def check_engine(app: AppImage, domain: str, *, root: Path | None = None) -> None:
    """`engine_problem` as an exception (EngineNotInstalled)."""
    problem = engine_problem(app, domain, root=root)
    if problem is not None:
        raise EngineNotInstalled(problem)


def engine_read_only_paths(app: AppImage, *, root: Path | None = None) -> list[Path]:
    """What a sandbox must expose read-only to run `app`: the venv, its base interpreter, the accord code."""
    if required_engine(app, root) is None:
        return []
    venv = _venv_of_command(app)
    if venv is None:
        return []
    found, _ = read_installed(venv)
    paths = [venv.resolve()]
    try:
        for line in (venv / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                paths.append(Path(value.strip()).resolve().parent)
    except OSError:
        pass
    if found is not None and found.accord_link is not None:
        paths.append(found.accord_link.resolve())
    return list(dict.fromkeys(paths))
