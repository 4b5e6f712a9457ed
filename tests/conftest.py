"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A folder for the tiny random models a test module builds (tests/tiny_models.py)."""
    return tmp_path_factory.mktemp("tiny")
