"""GPU checks (marker `gpu`): skipped without a CUDA device; run them on a GPU machine with
`python -m pytest -q -m gpu`."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from leadercli.cli.main import app

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_student_scores_on_gpu_equal_cpu(tmp_path, tiny_artifact, monkeypatch):
    import shutil

    from leadercli import Recommender

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_artifact, tmp_path / "data" / "mimic3")
    (tmp_path / "leader.toml").write_text("[student]\nepochs = 1\nhidden = 16\nff = 32\n")
    r = CliRunner().invoke(app, ["train", "student", "-q"])
    assert r.exit_code == 0, r.output
    visits = pl.read_parquet("data/mimic3/visits.parquet")
    cpu = Recommender.load("runs/student").predict(visits)
    gpu = Recommender.load("runs/student", device="cuda").predict(visits)
    assert cpu.drop("score").equals(gpu.drop("score"))
    assert np.abs(cpu["score"].to_numpy() - gpu["score"].to_numpy()).max() < 1e-4
