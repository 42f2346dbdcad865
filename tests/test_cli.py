"""The command surface: help texts, README coverage, settings precedence and errors, fast startup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadercli.cli.main import app
from leadercli.data.registry import get_layout
from leadercli.settings import load_settings, settings_reference

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = [
    "preprocess",
    "train teacher",
    "train student",
    "distill",
    "predict",
    "report",
    "export",
    "demo",
    "config",
]
runner = CliRunner()


def _help(cmd: str) -> str:
    r = runner.invoke(app, [*cmd.split(), "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    return r.output


def _summary(cmd: str) -> str:
    """First line of the command's docstring (its help summary)."""
    from typer.main import get_command

    group = get_command(app)
    for part in cmd.split():
        group = group.commands[part]
    return " ".join(group.help.strip().split("\n\n")[0].split())


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_examples(cmd):
    text = _help(cmd)
    assert "Examples" in text and f"$ leader {cmd}" in text
    for flag in ("--config", "--quiet", "--debug"):
        assert flag in text


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_is_in_the_readme_with_its_help_text(cmd):
    assert f"`leader {cmd}`" in README
    assert _summary(cmd) in " ".join(README.split()), f"README lacks the help text of `leader {cmd}`"


def test_readme_settings_table_is_generated_from_the_model():
    block = README.split("<!-- settings:start -->")[1].split("<!-- settings:end -->")[0].strip()
    assert block == settings_reference(), (
        "README settings table is stale: regenerate it from leadercli.settings.settings_reference()"
    )


def test_help_is_instant_no_heavy_imports():
    code = "import sys, leadercli.cli.main; print(sorted(m for m in ('torch','transformers','polars') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_settings_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings().data.seed == 42
    (tmp_path / "leader.toml").write_text("[data]\nseed = 1\nsource = 'mimic4'\n")
    assert load_settings().data.seed == 1
    monkeypatch.setenv("LEADER_DATA__SEED", "2")
    assert load_settings().data.seed == 2
    s = load_settings(overrides={"data": {"seed": 3}})
    assert (
        s.data.seed == 3 and s.data.source == "mimic4" and s.top_procedures(get_layout(s.data.source)) == 1000
    )


@pytest.mark.parametrize(
    "toml, needle",
    [
        ("[data]\nsourse = 'mimic3'\n", "data.sourse': unknown key"),
        ("[student]\nlr = 'fast'\n", "student.lr'"),
        ("[nosection]\na = 1\n", "nosection': unknown key"),
        ("[data\n", "not valid TOML"),
        ("[data]\nsplit_ratios = [0.5, 0.1, 0.1]\n", "data.split_ratios'"),
    ],
)
def test_bad_settings_are_one_line_exit_2(tmp_path, monkeypatch, toml, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leader.toml").write_text(toml)
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 2
    assert needle in r.output and "leader.toml" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_config_prints_resolved_toml(tmp_path, monkeypatch):
    import tomllib

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEADER_STUDENT__BATCH_SIZE", "7")
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 0
    data = tomllib.loads(r.output)
    assert data["student"]["batch_size"] == 7 and data["data"]["source"] == "mimic3"


def test_missing_config_file_is_an_error(tmp_path):
    r = runner.invoke(app, ["config", "--config", str(tmp_path / "nope.toml")])
    assert r.exit_code == 2 and "nope.toml" in r.output


def test_missing_artifact_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", "student"])
    assert r.exit_code == 2 and "leader preprocess" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_python_m_leadercli(tmp_path):
    env = dict(os.environ, COLUMNS="120")
    p = subprocess.run(
        [sys.executable, "-m", "leadercli", "--version"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0 and p.stdout.startswith("leader ")


def test_unexpected_errors_show_no_message(monkeypatch):
    """An unexpected exception's text may quote data: without --debug only its type and place are printed."""
    import leadercli.settings as settings_mod

    def boom(*a, **k):
        raise ValueError("patient 123 has value SECRET")

    monkeypatch.setattr(settings_mod, "load_settings", boom)
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 1
    assert "ValueError" in r.output and "SECRET" not in r.output and "--debug" in r.output
