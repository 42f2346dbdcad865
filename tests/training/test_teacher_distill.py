"""`leader train teacher` (tiny LLaMA-style decoder, single and two CPU processes) and `leader distill`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_llama import make_tiny_llama
from typer.testing import CliRunner

from leadercli import runs
from leadercli.cli.main import app

runner = CliRunner()

TOML = """
[teacher]
max_steps = 4
eval_every = 2
batch_size = 4
eval_batch_size = 16
lr = 0.005
[student]
epochs = 3
batch_size = 8
hidden = 16
ff = 32
"""


@pytest.fixture(scope="module")
def teacher_wd(tmp_path_factory, tiny_artifact):
    wd = tmp_path_factory.mktemp("teacher")
    shutil.copytree(tiny_artifact, wd / "data" / "mimic3")
    make_tiny_llama(wd / "llama")
    (wd / "leader.toml").write_text(TOML.replace("[teacher]", f'[teacher]\nbase_model = "{wd / "llama"}"'))
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        r = runner.invoke(app, ["train", "teacher", "-q"])
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    return wd


def test_teacher_run_folder(teacher_wd):
    out = teacher_wd / "runs" / "teacher"
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "head.safetensors",
        "manifest.json",
        "settings.toml",
        "train_log.jsonl",
        "features/train.safetensors",
        "features/val.safetensors",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists() and not (out / "best").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "teacher" and m["backbone_kind"] == "decoder" and m["pooling"] == "last"
    assert m["prompt"]["template_version"] == "leader-v1-fixed"
    assert m["lora"]["r"] == 8 and m["lora"]["alpha"] == 32 and "q_proj" in m["lora"]["targets"]
    assert m["training"]["steps"] == 4 and m["training"]["processes"] == 1
    log = runs.read_log(out)
    assert [r["step"] for r in log] == [2, 4] and all("val_prauc" in r for r in log)
    assert m["metrics"]["test"]["overall"]["n"] > 0
    head = load_file(str(out / "head.safetensors"))["head.weight"]
    assert head.shape == (12, 32)  # labels × tiny hidden size


def test_teacher_features_cover_train(teacher_wd):
    from leadercli.data.artifact import Artifact
    from leadercli.data.samples import load_samples
    from leadercli.models.features import FeatureCache

    cache = FeatureCache.load(teacher_wd / "runs/teacher/features/train.safetensors")
    train = load_samples(Artifact(teacher_wd / "data/mimic3"), "train")
    assert cache.dim == 32 and len(cache) == len(train)
    assert cache.covers([s.subject_id for s in train])


def _distill(wd: Path, *args: str):
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        return runner.invoke(app, ["distill", "-q", *args])
    finally:
        os.chdir(cwd)


def test_distill_runs_and_projector_follows_teacher(teacher_wd):
    r = _distill(teacher_wd)
    assert r.exit_code == 0, r.output
    out = teacher_wd / "runs/distilled"
    heads = load_file(str(out / "distill_heads.safetensors"))
    assert heads["kd_projector.weight"].shape == (32, 128)  # teacher hidden × student head_hidden
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "distilled" and m["distill"]["alpha"] == 0.4 and m["distill"]["beta"] == 0.005
    # kd_target auto: this teacher took LoRA steps, so its features are distilled
    assert m["distill"]["kd_target"] == "features" and m["distill"]["kd_target_setting"] == "auto"
    assert m["teacher"]["backbone"]["hidden_size"] == 32
    log = runs.read_log(out)
    assert all({"bce", "kd", "align", "loss"} <= set(r) for r in log)
    # predict works unchanged on a distilled run
    cwd = os.getcwd()
    os.chdir(teacher_wd)
    try:
        r = runner.invoke(
            app, ["predict", "data/mimic3/visits.parquet", "-o", "d.csv", "--model", "runs/distilled", "-q"]
        )
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output


def test_no_kd_no_align_equals_train_student(teacher_wd):
    r = _distill(teacher_wd, "--no-kd", "--no-align", "--out", "runs/plain")
    assert r.exit_code == 0, r.output
    cwd = os.getcwd()
    os.chdir(teacher_wd)
    try:
        r = runner.invoke(app, ["train", "student", "-q", "--out", "runs/student-eq"])
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    a = load_file(str(teacher_wd / "runs/plain/model.safetensors"))
    b = load_file(str(teacher_wd / "runs/student-eq/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((teacher_wd / "runs/plain/manifest.json").read_text())
    mb = json.loads((teacher_wd / "runs/student-eq/manifest.json").read_text())
    assert ma["metrics"] == mb["metrics"]


def test_distill_cache_not_covering_train_is_an_error(teacher_wd, tmp_path):
    from leadercli.models.features import load_features, save_features

    t2 = tmp_path / "teacher2"
    shutil.copytree(teacher_wd / "runs/teacher", t2)
    p = t2 / "features/train.safetensors"
    sids, hids, feats, meta = load_features(p)
    save_features(p, sids[:-3], hids[:-3], feats[:-3], meta)
    r = _distill(teacher_wd, "--teacher", str(t2), "--out", str(tmp_path / "d"))
    assert r.exit_code == 2
    assert "lacks 3 of" in r.output and "training patients" in r.output
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_teacher_head_mismatching_backbone_is_one_line_error(teacher_wd, tmp_path):
    t2 = tmp_path / "teacher3"
    shutil.copytree(teacher_wd / "runs/teacher", t2)
    shutil.rmtree(t2 / "features")
    wide = make_tiny_llama(tmp_path / "wide", hidden_size=48)
    m = json.loads((t2 / "manifest.json").read_text())
    m["base_model"] = str(wide)
    (t2 / "manifest.json").write_text(json.dumps(m))
    r = _distill(teacher_wd, "--teacher", str(t2), "--out", str(tmp_path / "d"))
    assert r.exit_code == 2
    assert "head.safetensors" in r.output and "(12, 32)" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_teacher_bad_backbone_paths(tmp_path, tiny_artifact, monkeypatch):
    shutil.copytree(tiny_artifact, tmp_path / "data" / "mimic3")
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", "teacher", "--base-model", "./no/such/model"])
    assert r.exit_code == 2 and "no/such/model" in r.output and "is not a folder" in r.output  # cli/checks.py
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "llama"}')
    r = runner.invoke(app, ["train", "teacher", "--base-model", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "safetensors" in r.output
    assert not (tmp_path / "runs" / "teacher" / "manifest.json").exists()


def test_teacher_refuses_other_label_list(teacher_wd, tmp_path):
    from synthetic import make_synthetic_artifact

    other = make_synthetic_artifact(tmp_path / "other" / "mimic3", n_patients=30, seed=5)
    vocab = json.loads((other / "vocab.json").read_text())
    for k in ("codes", "titles"):
        vocab["medications"][k] = vocab["medications"][k][:-2]
    (other / "vocab.json").write_text(json.dumps(vocab))
    r = _distill(teacher_wd, "--data", str(other), "--out", str(tmp_path / "d"))
    assert r.exit_code == 2 and "another label list" in r.output


@pytest.mark.slow
def test_torchrun_two_cpu_processes(teacher_wd, tmp_path):
    """Two processes (gloo DDP through accelerate) each train on their share and write one result."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "ddp"
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "leadercli",
        "train",
        "teacher",
        "-q",
        "--out",
        str(out),
    ]
    p = subprocess.run(cmd, cwd=teacher_wd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["training"]["processes"] == 2 and m["training"]["steps"] == 4
    from leadercli.models.features import FeatureCache

    cache = FeatureCache.load(out / "features/train.safetensors")
    single = FeatureCache.load(teacher_wd / "runs/teacher/features/train.safetensors")
    assert len(cache) == len(single)  # both ranks' shares merged, nothing duplicated
    assert not list((out / "features").glob("*.rank*"))


def test_teacher_resume_equals_uninterrupted(teacher_wd, tmp_path, monkeypatch):
    """Interrupted after its first evaluation checkpoint (step 2; the step-0 checkpoint after the linear probe
    comes first), a resumed teacher run ends with the same weights."""
    from leadercli import checkpoint as recipe

    real = recipe.save_state

    def crash_after_first(path, params, optimizer, state, scheduler=None):
        real(path, params, optimizer, state, scheduler)
        if state["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "save_state", crash_after_first)
    out = tmp_path / "resumed"
    cwd = os.getcwd()
    os.chdir(teacher_wd)
    try:
        r = runner.invoke(app, ["train", "teacher", "-q", "--out", str(out)])
        assert r.exit_code == 130 and (out / "checkpoint" / "state.json").is_file()
        assert not (out / "manifest.json").exists()
        monkeypatch.setattr(recipe, "save_state", real)
        r = runner.invoke(app, ["train", "teacher", "-q", "--out", str(out), "--resume"])
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    a = load_file(str(teacher_wd / "runs/teacher/head.safetensors"))["head.weight"]
    b = load_file(str(out / "head.safetensors"))["head.weight"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    la = load_file(str(teacher_wd / "runs/teacher/adapter/adapter_model.safetensors"))
    lb = load_file(str(out / "adapter/adapter_model.safetensors"))
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=0, atol=1e-6)
    assert [r["step"] for r in runs.read_log(out)] == [2, 4]


def test_logit_kd_matches_the_teacher_heads_probabilities(teacher_wd, monkeypatch):
    """`distill.kd_target = "logits"`: the KD term is BCE to the teacher's probabilities, computed from the
    cached features through its head — equal to the teacher's own scores of the training patients."""
    from leadercli.data.artifact import Artifact
    from leadercli.data.samples import load_samples
    from leadercli.models.features import FeatureCache
    from leadercli.runs import load_run
    from leadercli.training.distill import _teacher_head

    monkeypatch.setenv("LEADER_DISTILL__KD_TARGET", "logits")
    r = _distill(teacher_wd, "--no-align", "--out", "runs/kd_logits")
    assert r.exit_code == 0, r.output
    assert (
        json.loads((teacher_wd / "runs/kd_logits/manifest.json").read_text())["distill"]["kd_target"]
        == "logits"
    )
    assert not (teacher_wd / "runs/kd_logits/distill_heads.safetensors").exists()  # no projector is made
    log = runs.read_log(teacher_wd / "runs/kd_logits")
    assert all(rec["kd"] > 0 for rec in log)
    w, b, fm, fs = _teacher_head(teacher_wd / "runs/teacher", torch.device("cpu"))
    cache = FeatureCache.load(teacher_wd / "runs/teacher/features/train.safetensors")
    samples = load_samples(Artifact(teacher_wd / "data/mimic3"), "train")[:8]
    feats = cache.lookup(torch.tensor([s.subject_id for s in samples]))
    soft = torch.sigmoid(((feats - fm) * fs) @ w.T + b)
    # the head's own probabilities: the unknown-code shrink (an output rule of the run) off
    direct = load_run(teacher_wd / "runs/teacher", unknown_shrink=0.0).score_samples(samples)
    torch.testing.assert_close(soft, torch.from_numpy(direct), rtol=0, atol=2e-3)  # fp16 feature cache


def test_kd_target_auto_follows_whether_the_teacher_was_fine_tuned():
    from leadercli.training.distill import resolve_kd_target

    probe_only = {"training": {"steps": 0}}
    lora = {"training": {"steps": 120}}
    assert resolve_kd_target("auto", probe_only) == "logits"
    assert resolve_kd_target("auto", lora) == "features"
    assert resolve_kd_target("auto", {}) == "features"  # older runs without the record: the reference
    assert resolve_kd_target("features", probe_only) == "features"
    assert resolve_kd_target("logits", lora) == "logits"
