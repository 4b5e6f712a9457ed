"""Fixtures shared by several test modules."""

import os

import pytest


def pytest_configure(config):
    """Tests never download: the Hugging Face libraries read their local cache only (a test that
    checks the online path sets its own environment and blocks sockets)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A folder for the tiny random models a test module builds (tests/tiny_models.py)."""
    return tmp_path_factory.mktemp("tiny")


def require_program(available: bool, program: str, package: str) -> None:
    """Skip a test whose system program is missing, saying how to get it; fail instead when CI
    is set (.ci/run installs every such package, so a missing one there is a broken CI)."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{program} is not installed but CI is set: `apt-get install {package}`")
    pytest.skip(f"{program} is not installed (`apt-get install {package}`)")
