"""Engine environments without installing one: where they live, the prepare check, failed installs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.cli.engine import app as engine_cli
from accord.resources.appimage import AppImage
from accord.runtimes import engines
from accord.runtimes.builtin import builtin_appimages
from accord.runtimes.engines import (
    ENGINE_LABEL,
    MANIFEST,
    EngineInstallError,
    EngineNotInstalled,
    check_engine,
    companion_pins,
    engine_app_image,
    engine_problem,
    engine_read_only_paths,
    engines_dir,
    install_engine,
    list_engines,
    required_engine,
)

SPU = engines.ENGINES["spu"]


def fake_install(root: Path) -> Path:
    """What a finished install leaves: a venv dir with bin/python, the accord link and the manifest."""
    venv = root / SPU.dir_name
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/usr/bin/env")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
    manifest = {
        "engine": "spu",
        "version": SPU.version,
        "packages": {"spu": "0.9.5", "numpy": "1.26.4"},
        "accord_link": str(engines.accord_package()),
    }
    (venv / MANIFEST).write_text(json.dumps(manifest))
    return venv


def test_engines_dir() -> None:
    assert engines_dir({engines.ENGINES_DIR_ENV: "/x/y", "XDG_DATA_HOME": "/data"}) == Path("/x/y")
    assert engines_dir({"XDG_DATA_HOME": "/data"}) == Path("/data/accord/engines")
    assert engines_dir({}) == Path.home() / ".local/share/accord/engines"


def test_the_spu_psi_appimage_is_seeded_with_the_builtins() -> None:
    images = {image.meta.name: image for image in builtin_appimages("/usr/bin/python3")}
    spu = images["spu-psi"]
    assert spu.meta.labels == {ENGINE_LABEL: "spu", "accord/builtin": "true"}
    assert spu.spec.command[1:] == ["-m", "accord.engines.spu_psi"]
    assert spu.spec.command[0].endswith("/spu-0.9.5/bin/python")
    assert spu.spec.ports == []  # blackbox link: the engine listens on nothing


def test_prepare_check_names_the_domain_and_the_command(tmp_path: Path) -> None:
    app = engine_app_image(SPU, tmp_path)
    expected = "engine spu not installed on alice: run accord engine install spu"
    assert engine_problem(app, "alice", root=tmp_path) == expected
    with pytest.raises(EngineNotInstalled) as info:
        check_engine(app, "alice", root=tmp_path)
    assert info.value.message == expected
    fake_install(tmp_path)
    assert engine_problem(app, "alice", root=tmp_path) is None
    # an engine that needs no environment
    hello = next(i for i in builtin_appimages("/usr/bin/python3") if i.meta.name == "hello")
    assert engine_problem(hello, "alice", root=tmp_path) is None


def test_a_users_appimage_running_the_spu_interpreter_needs_it_too(tmp_path: Path) -> None:
    app = AppImage.model_validate(
        {
            "meta": {"name": "my-psi"},
            "spec": {"command": [str(tmp_path / "spu-0.9.5" / "bin" / "python"), "-m", "my.engine"]},
        }
    )
    assert required_engine(app, tmp_path) == "spu"
    assert engine_problem(app, "bob", root=tmp_path) == (
        "engine spu not installed on bob: run accord engine install spu"
    )


def test_an_environment_without_manifest_or_with_a_dangling_accord_link_is_not_installed(
    tmp_path: Path,
) -> None:
    venv = fake_install(tmp_path)
    manifest = json.loads((venv / MANIFEST).read_text())
    (venv / MANIFEST).write_text(json.dumps({**manifest, "accord_link": str(tmp_path / "gone")}))
    rows = list_engines(tmp_path)
    assert rows[0].installed is None and "is gone: run accord engine install spu" in rows[0].problem
    (venv / MANIFEST).unlink()
    assert list_engines(tmp_path)[0].installed is None
    assert engine_problem(engine_app_image(SPU, tmp_path), "alice", root=tmp_path) is not None


def test_read_only_paths_for_a_sandbox(tmp_path: Path) -> None:
    venv = fake_install(tmp_path)
    paths = engine_read_only_paths(engine_app_image(SPU, tmp_path), root=tmp_path)
    assert paths == [venv.resolve(), Path("/usr"), engines.accord_package()]


def test_a_failed_install_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(EngineInstallError, match="creating the venv failed"):
        install_engine("spu", root=tmp_path, python=str(tmp_path / "no-such-python"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{SPU.dir_name}.lock"]
    with pytest.raises(Exception, match="unknown engine 'tee'; this Accord can install: spu"):
        install_engine("tee", root=tmp_path)


def test_companions_follow_the_node_unless_too_new(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"pyarrow": "26.0.1", "httpx": "0.28.1", "pydantic": "2.14.3"}
    monkeypatch.setattr(engines.importlib.metadata, "version", versions.__getitem__)
    assert companion_pins(SPU) == ["pyarrow<26", "httpx==0.28.1", "pydantic==2.14.3"]
    versions["pyarrow"] = "25.0.1"
    assert companion_pins(SPU)[0] == "pyarrow==25.0.1"


def test_cli_list(tmp_path: Path) -> None:
    result = CliRunner().invoke(engine_cli, ["list", "--engines-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "spu" in result.output and "not installed" in result.output
    fake_install(tmp_path)
    result = CliRunner().invoke(
        engine_cli, ["list"], env={**os.environ, engines.ENGINES_DIR_ENV: str(tmp_path)}
    )
    assert "installed" in result.output and "numpy 1.26.4" in result.output
