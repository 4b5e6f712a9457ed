# SCAV task runner. `just` comes from PyPI (`pip install rust-just`).
# Every recipe sets up its own virtual environment first (idempotent, fast when done).

set shell := ["bash", "-eu", "-o", "pipefail", "-c"]

venv := ".venv"
py := venv / "bin/python"

# list the recipes
default:
    @just --list

# what `setup` installs: every stage the demo and the tests use (base alone = train/retrieve from a cache)
extras := "extract,distributed,hdf5,dub,test"

# create .venv and install SCAV with the extras above (skipped when pyproject.toml is unchanged)
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp="{{venv}}/.scav-installed-$( (cat pyproject.toml; echo {{extras}}) | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ]; then exit 0; fi
    test -x {{py}} || python3 -m venv {{venv}}
    {{py}} -m pip install -q --upgrade pip
    {{py}} -m pip install -q -e ".[{{extras}}]"
    rm -f {{venv}}/.scav-installed-*; touch "$stamp"

# the whole pipeline on the synthetic benchmark: generate, extract, train CAV+SCAV, retrieve
demo *ARGS: setup
    {{py}} -m scav.demo {{ARGS}}

# the test suite (slow, GPU and real-weight checks are skipped by default)
test *ARGS: setup
    {{py}} -m pytest {{ARGS}}

# the benchmarks behind the figures in the README (minutes; pass --quick for a smoke run)
bench *ARGS: setup
    {{py}} bench/bench_extract.py {{ARGS}}
    {{py}} bench/bench_losses.py {{ARGS}}
    {{py}} bench/bench_retrieval.py {{ARGS}}
    {{py}} bench/bench_loader.py {{ARGS}}
