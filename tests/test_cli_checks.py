"""Arguments checked before any heavy import (issue 13 item 6), `--set section.key=value` on every command, and
unknown options pointing at it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadercli.cli.main import app

runner = CliRunner()


def _no_torch_env(tmp_path: Path) -> dict:
    """An environment in which `import torch` (and transformers, polars) fails: a check that runs after such an
    import cannot pass."""
    fake = tmp_path / "fake"
    for mod in ("torch", "transformers", "polars"):
        (fake / mod).mkdir(parents=True, exist_ok=True)
        (fake / mod / "__init__.py").write_text(
            f"raise ImportError('{mod} must not be imported for this check')\n"
        )
    return {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["predict", "nope.parquet", "-o", "x.txt"], "must end in .csv or .parquet"),
        (["predict", "nope.parquet", "-o", "x.csv"], "does not exist"),
        (["predict", "in.parquet", "-o", "x.csv", "--model", "runs/none"], "not a finished run folder"),
        (["train", "teacher", "--base-model", "/nonexistent/model"], "is not a folder"),
        (["distill", "--teacher", "runs/none"], "leader train teacher"),
    ],
)
def test_wrong_paths_fail_before_heavy_imports(tmp_path, args, needle):
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    r = subprocess.run(
        [sys.executable, "-m", "leadercli", *args],
        cwd=tmp_path,
        env=_no_torch_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "must not be imported" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_set_overrides_any_setting(tmp_path, tiny_artifact, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_artifact, tmp_path / "data" / "mimic3")
    r = runner.invoke(
        app,
        [
            "train",
            "student",
            "-q",
            "--set",
            "student.epochs=2",
            "--set",
            "student.hidden=16",
            "--set",
            "student.ff=32",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads(Path("runs/student/manifest.json").read_text())
    assert m["epochs_run"] == 2 and m["model_config"]["hidden"] == 16
    r = runner.invoke(app, ["config", "--set", "student.epochs=7", "--set", "hardware.device=cpu"])
    assert r.exit_code == 0 and "epochs = 7" in r.output and 'device = "cpu"' in r.output


@pytest.mark.parametrize(
    "item, needle",
    [
        ("bad", "is not section.key=value"),
        ("student.nokey=1", "student.nokey"),
        ("student.epochs=x", "student.epochs"),
    ],
)
def test_bad_set_is_one_line(tmp_path, monkeypatch, item, needle):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["config", "--set", item])
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1


def test_unknown_option_points_at_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", "student", "--epochs", "3"])
    assert r.exit_code == 2
    text = " ".join(r.output.replace("│", " ").split())
    assert "--set section.key=value" in text and "leader config" in text


def test_config_lists_unset_keys_with_descriptions(tmp_path, monkeypatch):
    import tomllib

    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 0
    assert "# base_model = unset  # " in r.output and "alpha = unset" in r.output
    assert tomllib.loads(r.output)["student"]["epochs"] >= 1  # still the resolved settings as TOML
