"""Dependencies by stage: training and retrieval from a cache need only the base install.

pyproject.toml's base ``dependencies`` must cover every third-party import of the
base modules (module-level or inside functions), and importing them must not pull
in an extra (decoder, frozen encoders, dask, HDF5). The set-up commands install
every extra the demo and the tests use.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

BASE_MODULES = ["scav.train.loop", "scav.train.cli", "scav.retrieve.cli", "scav.core.cache", "scav.core.loader",
                "scav.probe.cli", "scav.probe.pipeline"]
EXTRA_ONLY = ["av", "transformers", "speechbrain", "torchaudio", "torchvision", "huggingface_hub",
              "dask", "distributed", "h5py", "decord"]  # fmt: skip
# folders whose every import must be satisfied by the base install; files that belong to an extra
BASE_DIRS = ["core", "sequence", "train", "retrieve", "scav", "probe"]
NOT_BASE = {"core/hdf5.py": "hdf5", "demo/pairs.py": "extract"}
# import name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn", "ot": "pot", "faiss": "faiss-cpu"}


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("scav", "__future__")}


def test_base_modules_import_no_extra():
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in BASE_MODULES)
        + f"print(json.dumps(sorted(m for m in {EXTRA_ONLY!r} if m in sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_base_dependencies_cover_every_import_of_the_base_modules():
    base = {_dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    missing = {}
    for folder in BASE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in NOT_BASE:
                continue
            for name in _third_party_imports(path):
                if DIST.get(name, name).lower().replace("_", "-") not in base:
                    missing.setdefault(name, []).append(rel)
    assert missing == {}, f"imported by base modules but not a base dependency: {missing}"


def test_extras_cover_the_stage_modules():
    extras = {k: {_dist_name(r) for r in v} for k, v in PYPROJECT["project"]["optional-dependencies"].items()}
    base = {_dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    stage = {"extract": ["extract", "data_manifests"], "hdf5": ["core/hdf5.py"]}
    ignore = {"distributed"}  # extract/runner.py's --scheduler path: the [distributed] extra
    for extra, places in stage.items():
        have = base | extras[extra]
        for place in places:
            p = ROOT / place
            for path in [p] if p.is_file() else sorted(p.rglob("*.py")):
                need = {DIST.get(n, n).lower().replace("_", "-") for n in _third_party_imports(path)} - ignore
                assert need <= have, f"{path.relative_to(ROOT)} needs {sorted(need - have)} beyond [{extra}]"
    assert "dask" in extras["distributed"] and "h5py" in extras["hdf5"]
    assert "torchvision" not in extras["extract"]  # it would switch CLIP's image processor (see pyproject)
    assert not ({"av", "transformers", "speechbrain", "torchaudio", "h5py", "dask", "decord"} & base)


def test_setup_installs_every_stage_and_ci_runs_the_readme_command():
    justfile = (ROOT / "justfile").read_text()
    extras = set(re.search(r'^extras := "([^"]+)"', justfile, re.M).group(1).split(","))
    assert extras == set(PYPROJECT["project"]["optional-dependencies"]) - {"all"}
    assert '-e ".[{{extras}}]"' in justfile
    ci = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert "set -euo pipefail" in ci and ci[-1].endswith("&& .venv/bin/just test")
