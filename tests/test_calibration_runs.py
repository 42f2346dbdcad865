"""Calibration in runs (issue 24 items 5, 7): `leader train student` fits temperature scaling on validation,
records it in the manifest and calibration.json, tunes the threshold on the calibrated scale; the Scorer applies
it; a run without calibration.json scores its model's raw probabilities; `leader export` carries the file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from leadercli import metrics
from leadercli.calibration import CALIBRATION_FILE, Calibrator
from leadercli.cli.main import app
from leadercli.data.artifact import Artifact
from leadercli.data.samples import load_samples
from leadercli.errors import ArtifactError
from leadercli.report.evaluate import multi_hot
from leadercli.runs import load_run

runner = CliRunner()


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny_artifact) -> Path:
    wd = tmp_path_factory.mktemp("calruns")
    shutil.copytree(tiny_artifact, wd / "data" / "mimic3")
    (wd / "leader.toml").write_text("[student]\nepochs = 2\nbatch_size = 8\nhidden = 16\nff = 32\n")
    old = Path.cwd()
    try:
        os.chdir(wd)
        for out, extra in (("runs/cal", ["--set", "calibration.method=temperature"]), ("runs/raw", [])):
            r = runner.invoke(app, ["train", "student", "--out", out, "-q", *extra])
            assert r.exit_code == 0, r.output
    finally:
        os.chdir(old)
    return wd


def _raw_probs(scorer, samples) -> np.ndarray:
    enc = scorer.encoder
    with torch.inference_mode():
        return scorer.module.probs(enc.collate(enc.encode_all(samples))).numpy()


def test_training_fits_records_and_applies_the_calibrator(runs_dir):
    run = runs_dir / "runs" / "cal"
    m = json.loads((run / "manifest.json").read_text())
    saved = json.loads((run / CALIBRATION_FILE).read_text())
    assert m["calibration"]["method"] == "temperature" and m["calibration"]["file"] == CALIBRATION_FILE
    assert saved["temperature"] == m["calibration"]["temperature"] > 0
    cal = Calibrator.from_dict(saved)
    art = Artifact(runs_dir / "data" / "mimic3")
    scorer = load_run(run, unknown_shrink=0.0)
    assert scorer.calibrator == cal
    val = load_samples(art, "val", 10)
    raw = _raw_probs(scorer, val)
    got = scorer.score_samples(val)
    np.testing.assert_allclose(got, cal.apply(raw), atol=1e-6)  # the Scorer's output is calibrated
    # the threshold was tuned on the calibrated validation scores
    y = multi_hot(val, art.vocab.medications.index)
    want = metrics.choose_threshold(None, y, cal.apply(raw).astype(np.float32))
    assert m["threshold"]["value"] == pytest.approx(want["value"])
    # ranking (and PRAUC) unchanged by the monotone map
    assert (np.argsort(-got, 1, kind="stable") == np.argsort(-cal.apply(raw), 1, kind="stable")).all()


def test_run_without_calibrator_scores_raw_probabilities(runs_dir):
    raw_run = runs_dir / "runs" / "raw"
    assert not (raw_run / CALIBRATION_FILE).exists()
    assert json.loads((raw_run / "manifest.json").read_text())["calibration"] == {"method": "none"}
    art = Artifact(runs_dir / "data" / "mimic3")
    test = load_samples(art, "test", 10)
    scorer = load_run(raw_run, unknown_shrink=0.0)
    assert scorer.calibrator is None
    np.testing.assert_array_equal(scorer.score_samples(test), _raw_probs(scorer, test))
    # an older run: the calibrated run without its file (manifests before issue 24 had no entry either)
    old = runs_dir / "old"
    shutil.copytree(runs_dir / "runs" / "cal", old)
    (old / CALIBRATION_FILE).unlink()
    m = json.loads((old / "manifest.json").read_text())
    m.pop("calibration")
    (old / "manifest.json").write_text(json.dumps(m))
    s = load_run(old, unknown_shrink=0.0)
    assert s.calibrator is None
    np.testing.assert_array_equal(s.score_samples(test), _raw_probs(s, test))


def test_damaged_calibrator_is_one_clear_error(runs_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(runs_dir / "runs" / "cal", bad)
    (bad / CALIBRATION_FILE).write_text('{"method": "temperature", "temperature": -1}')
    with pytest.raises(ArtifactError, match="calibration.json is not a readable calibrator"):
        load_run(bad)


def test_export_carries_the_calibrator(runs_dir, tmp_path):
    out = tmp_path / "share"
    r = runner.invoke(app, ["export", str(runs_dir / "runs" / "cal"), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / CALIBRATION_FILE).read_text()) == json.loads(
        (runs_dir / "runs" / "cal" / CALIBRATION_FILE).read_text()
    )
    assert load_run(out).calibrator is not None
