"""Bad input, damaged folders, faults and kills (issue 12): every failure is exit code 2 and one line naming the
file, column, key or value and what to do, with no traceback; nothing half-written is left; inputs are never
modified. One test (or parametrised group) per class of failure; the README's table "What leader promises
under bad input, faults and kills" points here."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from leadercli.cli.main import app

runner = CliRunner()
TOML = "[student]\nepochs = 1\nbatch_size = 8\nhidden = 16\nff = 32\n"


# -- helpers ---------------------------------------------------------------------------------------------------
def invoke(args: list[str]):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under `root` → (mtime in ns, sha256)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def assert_one_line(r, *needles: str) -> str:
    """Exit code 2, exactly one `error:` line, no traceback; the line contains every needle."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "unexpected error" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def wd(tmp_path_factory, tiny_artifact) -> Path:
    """A working folder: the tiny artifact in data/mimic3, a tiny student run in runs/student, its visits as
    a prediction input."""
    wd = tmp_path_factory.mktemp("bad")
    shutil.copytree(tiny_artifact, wd / "data" / "mimic3")
    (wd / "leader.toml").write_text(TOML)
    old = Path.cwd()
    try:
        os.chdir(wd)
        r = invoke(["train", "student", "-q"])
        assert r.exit_code == 0, r.output
    finally:
        os.chdir(old)
    return wd


@pytest.fixture
def cwd(wd, monkeypatch) -> Path:
    monkeypatch.chdir(wd)
    for key in list(os.environ):
        if key.startswith("LEADER_"):
            monkeypatch.delenv(key)
    return wd


@pytest.fixture
def unchanged(cwd):
    """Nothing in the working folder is modified, and nothing new is left behind except `allow` entries."""
    before = snapshot(cwd)
    allow: list[str] = []
    yield allow
    after = snapshot(cwd)
    assert {k: v for k, v in after.items() if k in before} == before, "an input was modified"
    new = [k for k in after if k not in before and not any(k.startswith(a) for a in allow)]
    assert not new, f"left behind: {new}"


def damaged_run(cwd: Path, name: str) -> Path:
    dst = cwd / "damaged" / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(cwd / "runs" / "student", dst)
    return dst


def _forbid_pickle(monkeypatch):
    import pickle

    import torch

    def boom(*a, **k):
        raise AssertionError("a pickle was read")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)


# -- I/O at the output -----------------------------------------------------------------------------------------
def test_out_parent_is_a_file_is_refused_before_work(cwd, unchanged):
    """train / distill / predict / report: an output under a file is refused up front."""
    (cwd / "afile").write_text("x")
    unchanged.append("afile")
    cases = [
        (["train", "student", "--out", "afile/run"], "is a file"),
        (["train", "student", "--out", "afile"], "is a file"),
        (["distill", "--no-kd", "--no-align", "--out", "afile/run"], "is a file"),
        (["train", "teacher", "--out", "afile/run"], "is a file"),
        (
            ["predict", "data/mimic3/visits.parquet", "-o", "afile/recs.csv", "--model", "runs/student"],
            "afile",
        ),
        (["report", "runs/student", "-o", "afile/rep"], "afile"),
    ]
    for args, needle in cases:
        r = invoke(args)
        line = assert_one_line(r, needle)
        assert "loading samples" not in r.output and "scoring" not in r.output, (args, line)


def test_read_only_output_is_refused_before_work(cwd, unchanged, monkeypatch):
    ro = cwd / "ro"
    ro.mkdir(exist_ok=True)
    unchanged.append("ro")
    real = os.access
    # root ignores permission bits, so the read-only folder is simulated where the check asks
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == ro else real(p, m, **k))
    for args in (
        ["train", "student", "--out", "ro/run"],
        ["predict", "data/mimic3/visits.parquet", "-o", "ro/recs.csv", "--model", "runs/student"],
        ["report", "runs/student", "-o", "ro/rep"],
    ):
        assert_one_line(invoke(args), "not writable", "ro")
    assert list(ro.iterdir()) == []


def test_full_disk_is_refused_before_work(cwd, unchanged, monkeypatch):
    import leadercli.paths as paths

    monkeypatch.setattr(paths, "free_bytes", lambda folder: 1000)
    for args in (
        ["train", "student", "--out", "runs/full"],
        ["predict", "data/mimic3/visits.parquet", "-o", "full.csv", "--model", "runs/student"],
        ["report", "runs/student", "-o", "full-report"],
    ):
        assert_one_line(invoke(args), "1000 bytes free", "needs about")


def test_predict_free_space_estimate_scales_with_the_input(cwd):
    from leadercli.predict import estimate_output_bytes

    small = estimate_output_bytes(Path("data/mimic3/visits.parquet"), Path("x.csv"), 20)
    rows = pl.read_parquet("data/mimic3/visits.parquet").height
    assert small == int(rows / 1.5 * 20 * 80)
    assert estimate_output_bytes(Path("data/mimic3/visits.parquet"), Path("x.parquet"), 20) < small


def test_teacher_free_space_estimate(cwd, tmp_path, monkeypatch):
    """A teacher run needs room for its feature cache (patients × hidden size), checked before training."""
    import leadercli.paths as paths
    from leadercli.runs import teacher_out_bytes

    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text('{"hidden_size": 4096}')
    m = json.loads(Path("data/mimic3/manifest.json").read_text())
    n = m["splits"]["train"] + m["splits"]["val"]
    assert teacher_out_bytes(Path("data/mimic3"), str(tmp_path / "llm")) == 4 * n * 4096 + (256 << 20)
    assert teacher_out_bytes(Path("nowhere"), None) == 0
    monkeypatch.setattr(paths, "free_bytes", lambda folder: 100 << 20)
    r = invoke(["train", "teacher", "--out", tmp_path / "t"])
    assert_one_line(r, "100.0 MiB free", "needs about 256.")
    assert not (tmp_path / "t").exists()


def test_disk_full_while_writing_leaves_nothing(cwd, unchanged, monkeypatch):
    import leadercli.predict.output as predict

    real = predict.open_writer

    class Full:
        def __init__(self, w):
            self.w = w

        def write_table(self, t):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.w.close()

    monkeypatch.setattr(predict, "open_writer", lambda p, s: Full(real(p, s)))
    r = invoke(["predict", "data/mimic3/visits.parquet", "-o", "recs-full.csv", "--model", "runs/student"])
    assert_one_line(r, "recs-full.csv", "No space left on device", "nothing was written")


# -- damaged run and artifact folders --------------------------------------------------------------------------
def _truncate(run: Path) -> None:
    p = run / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _pickle(run: Path) -> None:
    import pickle

    (run / "model.safetensors").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))


def _no_vocab(run: Path) -> None:
    (run / "vocab.json").unlink()


def _no_model_config(run: Path) -> None:
    m = json.loads((run / "manifest.json").read_text())
    del m["model_config"]
    (run / "manifest.json").write_text(json.dumps(m))


def _manifest_not_json(run: Path) -> None:
    (run / "manifest.json").write_text("{not json")


def _no_threshold(run: Path) -> None:
    m = json.loads((run / "manifest.json").read_text())
    del m["threshold"]
    (run / "manifest.json").write_text(json.dumps(m))


def _threshold_text(run: Path) -> None:
    m = json.loads((run / "manifest.json").read_text())
    m["threshold"]["value"] = "high"
    (run / "manifest.json").write_text(json.dumps(m))


def _model_config_bad(run: Path) -> None:
    m = json.loads((run / "manifest.json").read_text())
    m["model_config"]["hidden"] = "wide"
    (run / "manifest.json").write_text(json.dumps(m))


def _weights_of_another_model(run: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    name = next(iter(state))
    state[name] = state[name].new_zeros((3, 3))
    save_file(state, str(run / "model.safetensors"))


def _vocab_not_vocab(run: Path) -> None:
    (run / "vocab.json").write_text('{"medications": 3}')


@pytest.mark.parametrize(
    "damage, needles",
    [
        (_truncate, ["model.safetensors", "not a readable safetensors", "leader train student --out"]),
        (_pickle, ["model.safetensors", "not a readable safetensors", "leader train student --out"]),
        (_no_vocab, ["vocab.json", "missing", "leader train student --out"]),
        (_no_model_config, ["manifest.json", "model_config", "leader train student --out"]),
        (_manifest_not_json, ["manifest.json", "not valid JSON"]),
        (_no_threshold, ["manifest.json", "threshold", "leader train student --out"]),
        (_vocab_not_vocab, ["vocab.json", "not a leadercli vocab"]),
        (_threshold_text, ["manifest.json", "threshold", "leader train student --out"]),
        (_model_config_bad, ["manifest.json", "model_config", "leader train student --out"]),
        (_weights_of_another_model, ["model.safetensors", "does not fit", "leader train student --out"]),
    ],
    ids=lambda x: getattr(x, "__name__", "")[1:] or None,
)
def test_damaged_run_folder_is_one_line_naming_the_file_and_command(cwd, monkeypatch, damage, needles):
    _forbid_pickle(monkeypatch)
    run = damaged_run(cwd, damage.__name__)
    damage(run)
    before = snapshot(cwd)
    assert_one_line(
        invoke(["predict", "data/mimic3/visits.parquet", "-o", "dmg.csv", "--model", run]), *needles
    )
    # leader report loads runs through load_run too (its own threshold check words it differently)
    assert_one_line(invoke(["report", run, "-o", "dmg-report"]), needles[0].removesuffix(".json"))
    assert snapshot(cwd) == before and not Path("dmg.csv").exists() and not Path("dmg-report").exists()


@pytest.mark.parametrize("variant", ["bin-only", "no-adapter", "truncated"])
def test_teacher_adapter_is_checked_before_peft(cwd, monkeypatch, variant):
    """A teacher run whose adapter/ holds only a pickle `.bin` (or nothing) is refused before peft is called
    (peft would unpickle the .bin, or look a missing folder's name up on the Hub)."""
    import leadercli.models.teacher as teacher

    def never(*a, **k):
        raise AssertionError("peft / the backbone was called")

    monkeypatch.setattr(teacher, "load_teacher", never)
    _forbid_pickle(monkeypatch)
    run = damaged_run(cwd, f"teacher-{variant}")
    m = json.loads((run / "manifest.json").read_text())
    m["kind"] = "teacher"
    (run / "manifest.json").write_text(json.dumps(m))
    (run / "head.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    if variant != "no-adapter":
        (run / "adapter").mkdir()
        (run / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    if variant == "truncated":
        (run / "adapter" / "adapter_config.json").write_text("{}")
        (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00")
    r = invoke(["predict", "data/mimic3/visits.parquet", "-o", "t.csv", "--model", run])
    needles = {
        "bin-only": ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin is not read"],
        "no-adapter": ["adapter_config.json"],
        "truncated": ["adapter_model.safetensors", "not a readable safetensors"],
    }[variant]
    assert_one_line(r, *needles, "leader train teacher --out")
    assert not Path("t.csv").exists()


def test_distill_checks_the_teacher_adapter_before_peft(cwd, monkeypatch):
    import leadercli.models.teacher as teacher

    monkeypatch.setattr(
        teacher, "load_teacher", lambda *a, **k: (_ for _ in ()).throw(AssertionError("peft"))
    )
    run = damaged_run(cwd, "teacher-for-distill")
    m = json.loads((run / "manifest.json").read_text())
    m["kind"] = "teacher"
    (run / "manifest.json").write_text(json.dumps(m))
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    before = snapshot(cwd)
    r = invoke(["distill", "--teacher", run, "--out", "runs/dx"])
    assert_one_line(r, "adapter_config.json", "adapter_model.bin is not read", "leader train teacher --out")
    assert snapshot(cwd) == before and not Path("runs/dx").exists()


def _bad_parquet(art: Path, name: str) -> None:
    p = art / name
    p.write_bytes(p.read_bytes()[:100])


@pytest.mark.parametrize("name", ["visits.parquet", "patients.parquet", "ddi.parquet", "vocab.json"])
def test_damaged_artifact_is_one_line_naming_the_file(cwd, name, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(cwd / "data" / "mimic3", art)
    if name.endswith(".parquet"):
        _bad_parquet(art, name)
    else:
        (art / name).write_text('{"diagnoses": 1}')
    before = snapshot(cwd)
    r = invoke(["train", "student", "--data", art, "--out", tmp_path / "run"])
    assert_one_line(r, name, "leader preprocess")
    assert snapshot(cwd) == before
    assert not (tmp_path / "run" / "manifest.json").exists()


# -- wrong dtypes in the predict input -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "column, expr, needle",
    [
        (
            "medications",
            pl.lit([1, 2], dtype=pl.List(pl.Int64)),
            "column 'medications' has type large_list<element: int64>",
        ),
        ("medications", pl.lit(3), "column 'medications'"),
        ("icd_version", pl.lit("9"), "column 'icd_version'"),
        ("diagnoses", pl.lit("D9:401"), "column 'diagnoses'"),
        ("subject_id", pl.col("subject_id").cast(pl.Utf8), "column 'subject_id'"),
    ],
)
def test_wrong_dtypes_in_predict_input(cwd, unchanged, tmp_path, column, expr, needle):
    bad = tmp_path / "bad.parquet"
    pl.read_parquet("data/mimic3/visits.parquet").with_columns(expr.alias(column)).write_parquet(bad)
    r = invoke(["predict", bad, "-o", "typed.csv", "--model", "runs/student"])
    assert_one_line(r, needle, "expected")


@pytest.mark.parametrize("how", ["truncated", "damaged inside"])
def test_damaged_predict_input_is_one_line(cwd, unchanged, tmp_path, how):
    """A truncated parquet file fails when opened; a damaged page in the middle fails while streaming, after
    the output was started: both are one line, and no output or temporary file is left."""
    big = pl.concat(
        [
            pl.read_parquet("data/mimic3/visits.parquet").with_columns(pl.col("subject_id") + k * 10_000)
            for k in range(40)
        ]
    )
    path = tmp_path / "in.parquet"
    big.write_parquet(path, row_group_size=200)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:
        for i in range(len(data) // 3, len(data) // 3 + 4000):
            data[i] = (data[i] * 7 + 13) & 0xFF
    path.write_bytes(bytes(data))
    r = invoke(["predict", path, "-o", "dmg-in.csv", "--model", "runs/student"])
    assert_one_line(r, "in.parquet", "not a readable parquet" if how == "truncated" else "is damaged")
    assert not Path("dmg-in.csv").exists() and not Path(".dmg-in.csv.tmp").exists()


def test_wrong_values_in_csv_input(cwd, unchanged, tmp_path):
    df = pl.read_parquet("data/mimic3/visits.parquet")
    csv = df.with_columns(
        *(pl.col(c).list.join(";") for c in ("diagnoses", "procedures", "medications")),
        pl.lit("nine").alias("icd_version"),
    )
    csv.write_csv(tmp_path / "bad.csv")
    r = invoke(["predict", tmp_path / "bad.csv", "-o", "typed.csv", "--model", "runs/student"])
    assert_one_line(r, "column 'icd_version'", "not whole numbers")


# -- silently wrong: a run's vocab.json changed ----------------------------------------------------------------
@pytest.mark.parametrize("how", ["reordered", "removed", "code renamed"])
def test_changed_run_vocab_is_refused(cwd, monkeypatch, how):
    run = damaged_run(cwd, f"vocab-{how}")
    v = json.loads((run / "vocab.json").read_text())
    meds = v["medications"]
    if how == "reordered":
        meds["codes"][0], meds["codes"][1] = meds["codes"][1], meds["codes"][0]
    elif how == "removed":
        meds["codes"], meds["titles"] = meds["codes"][:-1], meds["titles"][:-1]
    else:
        v["diagnoses"]["codes"][0] = "D9:XXXX"
    (run / "vocab.json").write_text(json.dumps(v))
    r = invoke(["predict", "data/mimic3/visits.parquet", "-o", "v.csv", "--model", run])
    needle = "label list" if how != "code renamed" else "not the vocabulary"
    assert_one_line(r, "vocab.json", needle, "leader train student --out")
    assert not Path("v.csv").exists()


# -- destructive paths -----------------------------------------------------------------------------------------
def _foreign_manifest(cwd: Path) -> Path:
    d = cwd / "foreign"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text('{"name": "some other tool"}')
    return d


def _prediction_input(cwd: Path) -> Path:
    d = cwd / "pinput"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text('{"kind": "prediction-input"}')
    shutil.copyfile(cwd / "data/mimic3/visits.parquet", d / "visits.parquet")
    return d


def _fake_teacher(cwd: Path) -> Path:
    d = cwd / "fake-teacher"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text('{"kind": "teacher"}')
    return d


def _other_files(cwd: Path) -> Path:
    d = cwd / "mine"
    d.mkdir(exist_ok=True)
    (d / "notes.txt").write_text("keep me")
    return d


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "student", "--out", "data/mimic3"], "is the artifact"),
        (["train", "student", "--out", "data"], "contains the artifact"),
        (["train", "student", "--out", "."], "contains the artifact"),
        (["train", "student", "--model", "popularity", "--out", "data/mimic3"], "is the artifact"),
        (["train", "student", "--out", "foreign"], "not a leadercli run"),
        (["train", "student", "--out", "pinput"], "not a leadercli run (kind 'prediction-input')"),
        (["train", "student", "--out", "mine"], "not a run folder (it holds notes.txt)"),
        (["train", "student", "--resume", "--out", "foreign"], "not a leadercli run"),
        (["train", "student", "--out", "fake-teacher"], "holds a teacher run"),
        (["distill", "--no-kd", "--no-align", "--out", "runs/student"], "holds a student run"),
        (["train", "teacher", "--out", "runs/student"], "holds a student run"),
        (
            ["distill", "--no-kd", "--no-align", "--teacher", "runs/student", "--out", "runs/student"],
            "is the teacher run",
        ),
        (["distill", "--no-kd", "--no-align", "--out", "data/mimic3"], "is the artifact"),
        (["train", "teacher", "--out", "data/mimic3"], "is the artifact"),
        (["train", "teacher", "--out", "foreign"], "not a leadercli run"),
        (
            ["predict", "pinput", "-o", "pinput/visits.parquet", "--model", "runs/student"],
            "is the input file",
        ),
        (["predict", "data/mimic3/visits.parquet", "-o", "data/mimic3/visits.parquet"], "is the input file"),
        (
            ["predict", "pinput", "-o", "data/mimic3/visits.parquet", "--model", "runs/student"],
            "would replace",
        ),
        (["predict", "pinput", "-o", "runs/student/ddi.parquet", "--model", "runs/student"], "would replace"),
    ],
)
def test_destructive_outputs_are_refused(cwd, args, needle):
    _foreign_manifest(cwd), _prediction_input(cwd), _other_files(cwd), _fake_teacher(cwd)
    before = snapshot(cwd)
    assert_one_line(invoke(args), needle)
    assert snapshot(cwd) == before


def test_run_folders_may_be_replaced(cwd, tmp_path):
    """What is allowed: a new or empty folder, a finished run of any kind, an unfinished run (run files, no
    manifest)."""
    from leadercli.runs import check_out_dir

    check_out_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    check_out_dir(cwd / "runs" / "student")
    check_out_dir(cwd / "runs" / "student", command="train student")
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoint").mkdir(parents=True)
    (unfinished / "settings.toml").write_text("")
    (unfinished / "train_log.jsonl").write_text("")
    (unfinished / "README.md").write_text("")  # the model card is written just before the manifest
    (unfinished / ".manifest.json.abc.tmp").write_text("")
    check_out_dir(unfinished)


def test_retraining_over_a_run_works_and_keeps_the_artifact(cwd, tmp_path):
    art = snapshot(cwd / "data")
    for _ in range(2):
        r = invoke(["train", "student", "-q", "--model", "popularity", "--out", tmp_path / "pop"])
        assert r.exit_code == 0, r.output
    assert snapshot(cwd / "data") == art
    assert json.loads((tmp_path / "pop" / "manifest.json").read_text())["kind"] == "popularity"


# -- settings --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, needle",
    [
        ("LEADER_FOO", "LEADER_FOO: 'foo' is not a section"),
        ("LEADER_STUDENT_EPOCHS", "Did you mean LEADER_STUDENT__EPOCHS?"),
        ("LEADER_STUDENT__EPOCH", "'student.epoch' is not a setting"),
        ("LEADER_EPOCHS", "Did you mean LEADER_STUDENT__EPOCHS?"),
    ],
)
def test_unknown_environment_variable_is_an_error(cwd, monkeypatch, name, needle):
    monkeypatch.setenv(name, "3")
    for args in (["config"], ["train", "student", "--out", "runs/env"]):
        assert_one_line(invoke(args), needle)
    assert not Path("runs/env").exists()


def test_known_environment_variables_still_work(cwd, monkeypatch):
    monkeypatch.setenv("LEADER_STUDENT__EPOCHS", "3")
    monkeypatch.setenv("leader_hardware__threads", "1")
    r = invoke(["config"])
    assert r.exit_code == 0 and "epochs = 3" in r.output


# -- leftovers after kill -9 -----------------------------------------------------------------------------------
def test_stale_predict_temporary_files_are_removed(cwd):
    for name in (".left.csv.tmp", ".left.csv.meta.json.x1y2.tmp"):
        Path(name).write_text("partial")
    r = invoke(["predict", "data/mimic3/visits.parquet", "-o", "left.csv", "--model", "runs/student"])
    assert r.exit_code == 0, r.output
    assert not Path(".left.csv.tmp").exists() and not Path(".left.csv.meta.json.x1y2.tmp").exists()
    assert pl.read_csv("left.csv").height > 0 and Path("left.csv.meta.json").is_file()
    for p in ("left.csv", "left.csv.meta.json"):
        Path(p).unlink()


def test_killed_predict_leaves_only_its_temporary_file(cwd, tmp_path):
    """kill -9 in the middle of writing: the output is absent (only the hidden temporary file remains, and the
    next run removes it)."""
    code = (
        "import os, signal, leadercli.predict.output as p\n"
        "real = p.open_writer\n"
        "class W:\n"
        "    def __init__(s, w): s.w = w\n"
        "    def write_table(s, t): s.w.write_table(t); os.kill(os.getpid(), signal.SIGKILL)\n"
        "    def close(s): s.w.close()\n"
        "p.open_writer = lambda path, suf: W(real(path, suf))\n"
        "from leadercli.cli.main import app\n"
        "app(['predict', 'data/mimic3/visits.parquet', '-o', 'killed.csv', '--model', 'runs/student'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not Path("killed.csv").exists() and Path(".killed.csv.tmp").exists()
    r = invoke(["predict", "data/mimic3/visits.parquet", "-o", "killed.csv", "--model", "runs/student"])
    assert r.exit_code == 0 and not Path(".killed.csv.tmp").exists()
    for p in ("killed.csv", "killed.csv.meta.json"):
        Path(p).unlink()


# -- scale: the contiguity check -------------------------------------------------------------------------------
@pytest.mark.parametrize("base", [0, 1 << 40, -(1 << 40)], ids=["dense", "wide", "negative"])
def test_contiguity_check_with_shuffled_subjects(base):
    """Any order of whole subjects is accepted; a subject seen in an earlier chunk is refused (bool array for
    ids below 2^26, sorted runs otherwise, whichever run of the merge holds it)."""
    from leadercli.predict.streaming import SeenSubjects

    rng = np.random.default_rng(0)
    ids = rng.permutation(20_000).astype(np.int64) * 3 + base
    chunks = np.array_split(ids, 157)
    seen = SeenSubjects()
    assert all(seen.add(c) for c in chunks)
    assert (seen.dense is not None) == (base == 0)
    if base:
        assert len(seen.runs) <= int(np.log2(len(chunks))) + 2
        assert np.concatenate(seen.runs).tolist() != [] and sorted(
            np.concatenate(seen.runs).tolist()
        ) == sorted(ids.tolist())
    for probe in (ids[0], ids[10_000], ids[-1]):
        assert not seen.add(np.array([probe + 1, probe]))  # probe + 1 is new (ids are multiples of 3)
    assert seen.add(np.array([base + 1, base + 4]))


def test_contiguity_check_switches_from_dense_to_runs():
    from leadercli.predict.streaming import SeenSubjects

    seen = SeenSubjects()
    assert seen.add(np.array([5, 9, 1000])) and seen.add(np.array([3, 7]))
    assert seen.add(np.array([1 << 40]))  # out of the bool array's range: its ids move to a run
    assert seen.dense is None and not seen.add(np.array([2, 9])) and not seen.add(np.array([1 << 40]))
    assert seen.add(np.array([4, 6, 1 << 41]))


def test_contiguity_check_is_linear():
    """Doubling the rows about doubles the time (shuffled ids; the old check was quadratic)."""
    import time

    from leadercli.predict.streaming import SeenSubjects

    def run(n):
        ids = np.random.default_rng(1).permutation(n).astype(np.int64) * 7 + 10_000_000
        seen = SeenSubjects()
        t0 = time.perf_counter()
        for c in np.array_split(ids, n // 4096):
            seen.add(c)
        return time.perf_counter() - t0

    small, big = min(run(200_000) for _ in range(3)), min(run(800_000) for _ in range(3))
    assert big < 4 * small * 2.5, (small, big)  # 4x the rows: linear ~4x, quadratic ~16x


# -- network ---------------------------------------------------------------------------------------------------
def test_offline_switches_are_set_at_startup_and_by_the_api(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_DATASETS_OFFLINE"]
    show = f"import os; print([os.environ.get(n) for n in {names}])"
    for setup in (
        "import leadercli.cli.main",
        "from leadercli import Recommender\ntry: Recommender.load('nowhere')\nexcept Exception: pass",
    ):
        p = subprocess.run(
            [sys.executable, "-c", f"{setup}\n{show}"], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert p.stdout.strip() == str(["1"] * 4), p.stderr
    env["HF_HUB_OFFLINE"] = "0"  # a user's own choice is kept
    p = subprocess.run(
        [sys.executable, "-c", f"import leadercli.cli.main\n{show}"], capture_output=True, text=True, env=env
    )
    assert p.stdout.strip().startswith("['0'")


# -- CPU threads -----------------------------------------------------------------------------------------------
def test_thread_policy():
    """The policy depends on the machine, never on its load (same seed → same numbers on a busy machine): one
    thread for the student's small ops, every available core for predict's pool and the teacher; an explicit
    hardware.threads always wins."""
    from leadercli.hardware import available_cores, cpu_threads
    from leadercli.settings import HardwareSettings

    auto, two = HardwareSettings(), HardwareSettings(threads=2)
    for load in (0.3, 2.0, 9.0):
        assert cpu_threads(auto, cores=2, load=load)[0] == 2
        assert cpu_threads(auto, cores=2, load=load, small_ops=True)[0] == 1
        assert cpu_threads(auto, cores=16, load=load, pool=True)[0] == 16
    assert cpu_threads(two, cores=2, load=5.0, small_ops=True) == (2, "hardware.threads")
    assert cpu_threads(auto)[0] == available_cores()
    assert available_cores() == len(os.sched_getaffinity(0))


def test_predict_applies_the_thread_setting(cwd, monkeypatch):
    import torch

    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    monkeypatch.setenv("LEADER_HARDWARE__THREADS", "1")
    r = invoke(["predict", "data/mimic3/visits.parquet", "-o", "th.csv", "--model", "runs/student", "-q"])
    assert r.exit_code == 0, r.output
    assert seen[0] == 1
    for p in ("th.csv", "th.csv.meta.json"):
        Path(p).unlink()


# -- data-side classes (lead) -----------------------------------------------------------------------------------
def test_float_ndcs_still_map():
    import polars as pl

    from leadercli.data.mapping import normalise_ndc

    got = pl.select(
        normalise_ndc(
            pl.Series(["00409490000", "409490000", "409490000.0", "409490000.00", "4.0949e+08", "0"])
        )
    ).to_series()
    assert got.to_list() == ["00409490000", "00409490000", "00409490000", "00409490000", "4.0949e+08", None]


def test_duplicated_visit_rows_in_predict_input(cwd):
    import polars as pl

    v = pl.read_parquet("data/mimic3/visits.parquet")
    pl.concat([v, v.head(1)]).sort("subject_id").write_parquet("dup.parquet")
    r = runner.invoke(app, ["predict", "dup.parquet", "-o", "dup.csv"])
    assert_one_line(r, "dup.parquet", "repeat a (subject_id, hadm_id)")
    assert not Path("dup.csv").exists()


def test_empty_admittime_is_named(tmp_path, monkeypatch):
    import polars as pl

    from leadercli.data.bundled import bundled_raw

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    shutil.copytree(bundled_raw("mimic3"), raw)
    adm = pl.read_csv(raw / "ADMISSIONS.csv", infer_schema=False)
    col = next(c for c in adm.columns if c.lower() == "admittime")
    adm.with_columns(pl.lit(None, dtype=pl.String).alias(col)).write_csv(raw / "ADMISSIONS.csv")
    r = runner.invoke(app, ["preprocess", "--raw", str(raw), "--out", "data/x"])
    assert_one_line(r, "admittime", "ADMISSIONS.csv")
    assert "mapping" not in r.output.lower() and not Path("data/x").exists()


def test_stale_preprocess_temporary_folders_are_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    stale = Path("data/.mimic3.tmp-999-deadbeef")
    stale.mkdir()
    (stale / "visits.parquet").write_bytes(b"half")
    r = runner.invoke(app, ["preprocess", "-q", "--out", "data/mimic3"])
    assert r.exit_code == 0, r.output
    assert not stale.exists() and Path("data/mimic3/manifest.json").is_file()


def test_keep_freed_memory_changes_no_number(monkeypatch):
    """The allocator setting the CLI makes for predict / train teacher / report / demo: callable twice, a no-op
    where there is no glibc, and the same floats either way."""
    import sys

    import torch

    from leadercli.hardware import keep_freed_memory

    torch.manual_seed(0)
    x = torch.randn(3000, 64)
    before = (x @ x.T).sum()
    keep_freed_memory()
    keep_freed_memory()
    assert torch.equal((x @ x.T).sum(), before)
    monkeypatch.setattr(sys, "platform", "darwin")
    keep_freed_memory()  # returns at once


# -- the newer paths (issue 23): MEDS, --for-run, CSV predict input, export, --set, raw tables ---------------------
@pytest.fixture(scope="module")
def etl_root(tmp_path_factory) -> Path:
    """MEDS written as the public MIMIC-IV ETL writes it (tests/meds_etl.py) from the bundled demo."""
    from meds_etl import write_etl_meds

    from leadercli.data.bundled import bundled_raw

    return write_etl_meds(bundled_raw("mimic4") / "hosp", tmp_path_factory.mktemp("etl") / "etl")


def _shard(root: Path, name: str, change) -> None:
    path = root / name
    change(pl.read_parquet(path) if path.exists() else None).write_parquet(path)


def _other_schema(
    root: Path,
) -> None:  # a MIMIC table among the shards (last in order: every shard is checked)
    from leadercli.data.bundled import bundled_raw

    pl.read_csv(bundled_raw("mimic4") / "hosp/admissions.csv.gz").write_parquet(
        root / "data/tuning/1.parquet"
    )


def _ndc_scientific(root: Path) -> None:
    _shard(
        root,
        "data/tuning/0.parquet",
        lambda ev: ev.with_columns(pl.col("code").str.replace(r"//(\d{6,})$", "//6.1e+10")),
    )


@pytest.mark.parametrize(
    "damage, needles",
    [
        (_other_schema, ["data/tuning/1.parquet", "column 'time' is missing"]),
        (
            lambda r: _shard(
                r, "data/tuning/0.parquet", lambda ev: ev.with_columns(pl.col("time").cast(pl.String))
            ),
            ["data/tuning/0.parquet", "column 'time' has type String"],
        ),
        (
            lambda r: _shard(
                r,
                "data/tuning/0.parquet",
                lambda ev: ev.with_columns(pl.lit(None, dtype=pl.String).alias("code")),
            ),
            ["data/tuning/0.parquet", "column 'code' is empty"],
        ),
        (lambda r: shutil.rmtree(r / "metadata"), ["no metadata/dataset.json"]),
        (lambda r: (r / "metadata/codes.parquet").unlink(), ["no metadata/codes.parquet"]),
        (
            lambda r: (r / "metadata/dataset.json").write_text("{not json"),
            ["metadata/dataset.json", "not valid JSON"],
        ),
        (
            lambda r: _shard(
                r, "metadata/subject_splits.parquet", lambda s: s.with_columns(pl.col("subject_id") + 10**9)
            ),
            ["metadata/subject_splits.parquet", "no event under data/"],
        ),
        (
            lambda r: _shard(
                r,
                "metadata/subject_splits.parquet",
                lambda s: s.with_columns(pl.lit("validation").alias("split")),
            ),
            ["metadata/subject_splits.parquet", "'validation'"],
        ),
        (_ndc_scientific, ["data/tuning/0.parquet", "scientific notation", "6.1e+10"]),
        (
            lambda r: (r / "data/train/0.parquet").write_bytes(b"PAR1 not really"),
            ["data/train/0.parquet", "not a readable parquet"],
        ),
    ],
    ids=[
        "other-schema",
        "mixed-type-time",
        "code-nulls",
        "no-metadata",
        "no-codes-parquet",
        "dataset-json",
        "split-unknown-subjects",
        "split-names",
        "ndc-scientific",
        "not-parquet",
    ],
)
def test_bad_meds_input(etl_root, tmp_path, monkeypatch, damage, needles):
    root = tmp_path / "meds"
    shutil.copytree(etl_root, root)
    damage(root)
    before = snapshot(root)
    monkeypatch.chdir(tmp_path)
    r = invoke(["preprocess", "--source", "meds", "--raw", root, "--out", "data/x"])
    assert_one_line(r, *needles)
    assert not Path("data/x").exists() and not list(Path(".").glob("data/.x*"))
    assert snapshot(root) == before


def test_meds_aux_without_mapping_files(etl_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("aux").mkdir()
    (Path("aux") / "README.txt").write_text("no mapping files here")
    r = invoke(["preprocess", "--source", "meds", "--raw", etl_root, "--aux", "aux", "--out", "data/x"])
    assert_one_line(r, "not found in aux folder aux")
    assert not Path("data/x").exists()


def test_meds_pattern_is_checked_by_the_engine_that_runs_it(etl_root, tmp_path, monkeypatch):
    """Python's `re` accepts look-ahead, polars' regex engine does not: the setting is refused up front, and a
    pattern without the group the reader needs is refused too."""
    monkeypatch.chdir(tmp_path)
    for value, needle in (
        (r"^MEDICATION//(?!STOP//)(?:.*//)?(?P<ndc>\d+)$", "look-around"),
        (r"^MEDICATION//(?:.*//)?(\d+)$", "(?P<ndc>...)"),
    ):
        Path("leader.toml").write_text(f"[meds]\nmedication_ndc = '{value}'\n")
        r = invoke(["preprocess", "--source", "meds", "--raw", etl_root, "--out", "data/x"])
        assert_one_line(r, "leader.toml", "meds.medication_ndc", needle)
        assert not Path("data/x").exists()


def test_for_run_bad_runs(cwd, unchanged, tmp_path):
    """--for-run: a run of another source, an artifact folder, an empty folder, a file."""
    from leadercli.data.bundled import bundled_raw

    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    raw4 = bundled_raw("mimic4")
    cases = [
        (["--for-run", "runs/student", "--source", "mimic4", "--raw", raw4], ["trained on mimic3 data"]),
        (["--for-run", "data/mimic3", "--raw", raw4], ["data/mimic3", "preprocess artifact"]),
        (["--for-run", tmp_path / "empty", "--raw", raw4], ["not a run folder"]),
        (["--for-run", tmp_path / "file", "--raw", raw4], ["is a file"]),
    ]
    for args, needles in cases:
        r = invoke(["preprocess", *args, "--out", tmp_path / "new"])
        assert_one_line(r, *needles)
        assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("sep", ["|", ",", " "])
def test_csv_lists_in_another_separator(cwd, unchanged, tmp_path, sep):
    """Every code would be unknown: said to be a malformed file, exit 2, no output."""
    df = pl.read_parquet("data/mimic3/visits.parquet")
    df.with_columns(pl.col(c).list.join(sep) for c in ("diagnoses", "procedures", "medications")).write_csv(
        tmp_path / "sep.csv"
    )
    r = invoke(["predict", tmp_path / "sep.csv", "-o", "sep-out.csv", "--model", "runs/student"])
    assert_one_line(r, "sep.csv", "column 'diagnoses'", "probably malformed", "';'-separated")
    assert not Path("sep-out.csv").exists()


def test_header_only_csv(cwd, unchanged, tmp_path):
    df = pl.read_parquet("data/mimic3/visits.parquet").head(0)
    df.with_columns(pl.col(c).list.join(";") for c in ("diagnoses", "procedures", "medications")).write_csv(
        tmp_path / "head.csv"
    )
    r = invoke(["predict", tmp_path / "head.csv", "-o", "head-out.csv", "--model", "runs/student"])
    assert_one_line(r, "head.csv", "no visits")
    assert not Path("head-out.csv").exists()


def test_export_into_a_non_empty_folder(cwd, unchanged):
    Path("shared").mkdir()
    (Path("shared") / "notes.txt").write_text("mine")
    unchanged.append("shared")
    r = invoke(["export", "runs/student", "--out", "shared"])
    assert_one_line(r, "shared", "not an earlier export")
    assert sorted(p.name for p in Path("shared").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "args, env, needles",
    [
        (["--set", "student.epoch=2"], {}, ["command line", "student.epoch", "unknown key"]),
        (["--set", "student.epochs=many"], {}, ["command line", "student.epochs", "valid integer"]),
        (
            [],
            {"LEADER_STUDENT__EPOCHS": "many"},
            ["environment variable LEADER_STUDENT__EPOCHS", "student.epochs"],
        ),
        (["--set", "student.epochs=3"], {"LEADER_STUDENT__HIDDEN": "wide"}, ["LEADER_STUDENT__HIDDEN"]),
    ],
)
def test_settings_errors_name_the_source_of_the_value(cwd, unchanged, monkeypatch, args, env, needles):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = invoke(["train", "student", *args, "--out", "runs/never"])
    assert_one_line(r, *needles)
    assert not Path("runs/never").exists()


def _m3_copy(tmp_path: Path) -> Path:
    from leadercli.data.bundled import bundled_raw

    raw = tmp_path / "raw"
    shutil.copytree(bundled_raw("mimic3"), raw)
    return raw


def _sci(raw: Path) -> None:
    rx = pl.read_csv(raw / "PRESCRIPTIONS.csv", infer_schema=False)
    col = next(c for c in rx.columns if c.lower() == "ndc")
    sci = (
        pl.col(col).cast(pl.Float64, strict=False).map_elements(lambda v: f"{v:.1e}", return_dtype=pl.String)
    )
    rx.with_columns(
        pl.when(pl.col(col).str.len_chars() > 5).then(sci).otherwise(pl.col(col)).alias(col)
    ).write_csv(raw / "PRESCRIPTIONS.csv")


def _open_quote(raw: Path) -> None:
    lines = (raw / "ADMISSIONS.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",", ',"', 1)
    (raw / "ADMISSIONS.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "damage, needles",
    [
        (
            lambda raw: (raw / "PRESCRIPTIONS.csv").write_bytes(bytes(range(256)) * 8),
            ["PRESCRIPTIONS.csv", "not a text (CSV) file"],
        ),
        (_open_quote, ["ADMISSIONS.csv", "quote", "line 4", "never closed"]),
        (_sci, ["PRESCRIPTIONS.csv", "scientific notation"]),
    ],
    ids=["binary-table", "unterminated-quote", "ndc-scientific"],
)
def test_bad_raw_tables(tmp_path, monkeypatch, damage, needles):
    raw = _m3_copy(tmp_path)
    damage(raw)
    monkeypatch.chdir(tmp_path)
    r = invoke(["preprocess", "--raw", raw, "--out", "data/x"])
    line = assert_one_line(r, *needles)
    assert "subject_id" not in line and "no prescription NDC maps" not in line
    assert not Path("data/x").exists()


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_export_checks_the_files_the_copy_needs(cwd, damage):
    """A run whose weights are cut or gone is not exported as shareable."""
    run = damaged_run(cwd, f"export-{damage}")
    weights = run / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-64])
    else:
        weights.unlink()
    r = invoke(["export", run, "--out", cwd / "damaged" / f"share-{damage}"])
    assert_one_line(r, "model.safetensors", "truncated" if damage == "truncated" else "missing")
    assert not (cwd / "damaged" / f"share-{damage}").exists()
