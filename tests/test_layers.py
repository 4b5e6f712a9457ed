"""The layers of docs/DESIGN.md are a contract: import-linter checks pyproject's
[tool.importlinter] over the package as it installs (a wheel's layout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def assemble_package(dest: Path) -> Path:
    """Copy every folder of pyproject's package-dir to where it installs (``core/`` ->
    ``scav/core``). grimp finds submodules by walking the package's folder, and the
    repository keeps them side by side instead."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dirs = conf["tool"]["setuptools"]["package-dir"]
    for pkg in conf["tool"]["setuptools"]["packages"]:  # subpackages (scav.extract.encoders) too
        parent = max((p for p in dirs if pkg == p or pkg.startswith(p + ".")), key=len)
        folder = ROOT / dirs[parent] / Path(*pkg[len(parent):].split(".")[1:])
        target = dest.joinpath(*pkg.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in folder.glob("*.py"):
            shutil.copy2(src, target / src.name)
    return dest


def lint(tmp_path: Path) -> subprocess.CompletedProcess:
    pkg_root = assemble_package(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(pkg_root)}
    lint_imports = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint_imports), str(ROOT / "pyproject.toml")], cwd=pkg_root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_layers_contract_holds(tmp_path):
    r = lint(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_a_violation_is_caught(tmp_path):
    """The check can fail: a core module importing the training app breaks the contract."""
    pkg = assemble_package(tmp_path / "site")
    (pkg / "scav" / "core" / "files.py").write_text(
        (pkg / "scav" / "core" / "files.py").read_text() + "\nimport scav.train.loop  # noqa\n")
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    lint_imports = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint_imports), str(ROOT / "pyproject.toml")], cwd=pkg, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "scav.core.files -> scav.train.loop" in r.stdout, r.stdout + r.stderr


def test_every_package_folder_is_listed():
    """A folder of modules that pyproject does not list would be missing from a wheel."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dirs = conf["tool"]["setuptools"]["package-dir"]
    listed = set(conf["tool"]["setuptools"]["packages"])
    for pkg, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([pkg, *rel.parts]) if rel.parts else pkg
            assert name in listed, f"{init.parent} ({name}) is not in pyproject's packages"
