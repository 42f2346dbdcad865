"""Files and folders that `leader` writes follow the umask (issue 13): 0644 / 0755 under umask 022, so that
colleagues can read runs and a web server can serve the report; 0600 / 0700 under umask 077."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadercli.cli.main import app

TOML = "[student]\nepochs = 1\nbatch_size = 16\nhidden = 16\nff = 32\n"


def _modes(root: Path) -> tuple[set[int], set[int]]:
    files, dirs = set(), set()
    for p in [root, *root.rglob("*")]:
        m = stat.S_IMODE(p.stat().st_mode)
        (dirs if p.is_dir() else files).add(m)
    return files, dirs


@pytest.mark.parametrize("mask, want_file, want_dir", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tmp_path, tiny_artifact, monkeypatch, mask, want_file, want_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leader.toml").write_text(TOML)
    old = os.umask(mask)
    try:
        runner = CliRunner()
        r = runner.invoke(app, ["preprocess", "-q", "--out", "data/mimic3"])
        assert r.exit_code == 0, r.output
        shutil.rmtree("data/mimic3")
        shutil.copytree(tiny_artifact, "data/mimic3")
        for args in (
            ["train", "student", "-q"],
            ["predict", "data/mimic3/visits.parquet", "-o", "out/recs.csv", "-q"],
            ["report", "runs/student", "-o", "report", "-q"],
        ):
            r = runner.invoke(app, args)
            assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    for root in ("runs/student", "out", "report"):
        files, dirs = _modes(tmp_path / root)
        assert files == {want_file}, (root, sorted(oct(m) for m in files))
        assert dirs == {want_dir}, (root, sorted(oct(m) for m in dirs))


def test_artifact_follows_the_umask(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        r = CliRunner().invoke(app, ["preprocess", "-q", "--out", "data/mimic3"])
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert _modes(tmp_path / "data/mimic3") == ({0o644}, {0o755})
