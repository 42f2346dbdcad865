"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import make_synthetic_artifact


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    return make_synthetic_artifact(tmp_path_factory.mktemp("artifact") / "mimic3")
