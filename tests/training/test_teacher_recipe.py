"""The teacher recipe's choices (issue 10): head bias at the label log-odds, the linear-probe stage (used /
skipped), the frozen-feature reuse when there is no fine-tuning, length buckets, and a loss that falls below
the frequency (popularity) loss. Tiny random LLaMA, tiny synthetic artifact, CPU."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_llama import make_tiny_llama
from typer.testing import CliRunner

from leadercli.cli.main import app
from leadercli.data.artifact import Artifact
from leadercli.data.samples import load_samples

runner = CliRunner()


@pytest.fixture(scope="module")
def wd(tmp_path_factory, tiny_artifact) -> Path:
    wd = tmp_path_factory.mktemp("teacher-recipe")
    shutil.copytree(tiny_artifact, wd / "data" / "mimic3")
    make_tiny_llama(wd / "llama")
    return wd


def _train(wd: Path, name: str, **teacher) -> Path:
    """`leader train teacher` with [teacher] keys from `teacher`; returns the run folder."""
    lines = ["[teacher]", f'base_model = "{wd / "llama"}"', "eval_batch_size = 16", "batch_size = 4"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in teacher.items()]
    (wd / f"{name}.toml").write_text("\n".join(lines) + "\n")
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        args = ["train", "teacher", "-q", "--config", f"{name}.toml", "--out", f"runs/{name}"]
        r = runner.invoke(app, args)
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    return wd / "runs" / name


def _train_labels(wd: Path) -> np.ndarray:
    art = Artifact(wd / "data" / "mimic3")
    idx = art.vocab.medications.index
    train = load_samples(art, "train")
    y = np.zeros((len(train), len(art.labels)), np.float32)
    for i, s in enumerate(train):
        y[i, [idx[c] for c in s.target.medications if c in idx]] = 1.0
    return y


def test_head_bias_starts_at_label_log_odds(wd):
    from leadercli.models.teacher import label_log_odds

    y = _train_labels(wd)
    p = y.mean(0).clip(1e-4, 1 - 1e-4)
    expected = np.log(p / (1 - p))
    np.testing.assert_allclose(label_log_odds(torch.from_numpy(y)).numpy(), expected, rtol=1e-5, atol=1e-5)
    # no probe, no fine-tuning: the saved head is the initial one
    run = _train(wd, "init", linear_probe="skip", feature_norm="none", max_steps=0)
    head = load_file(str(run / "head.safetensors"))
    np.testing.assert_allclose(head["head.bias"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert head["head.weight"].abs().max() < 0.2  # N(0, 0.02)
    assert torch.equal(head["feat_mean"], torch.zeros(32)) and torch.equal(head["feat_scale"], torch.ones(32))
    m = json.loads((run / "manifest.json").read_text())
    assert m["recipe"]["head_bias"] == "log_odds" and m["recipe"]["linear_probe"] == {"mode": "skip"}
    assert m["training"]["steps"] == 0 and m["recipe"]["fine_tune_steps"] == 0


def test_bias_free_reference_head(wd):
    run = _train(wd, "nobias", head_bias="none", linear_probe="skip", feature_norm="none", max_steps=0)
    assert set(load_file(str(run / "head.safetensors"))) == {"head.weight", "feat_mean", "feat_scale"}
    m = json.loads((run / "manifest.json").read_text())
    assert m["recipe"]["head_bias"] == "none"


def test_linear_probe_used_standardises_and_reuses_frozen_features(wd):
    from leadercli.models.features import FeatureCache
    from leadercli.models.teacher import load_teacher
    from leadercli.models.teacher_infer import make_prompts, run_teacher

    run = _train(wd, "lp", linear_probe="use", feature_norm="standardize", lp_epochs=40, max_steps=0)
    m = json.loads((run / "manifest.json").read_text())
    lp = m["recipe"]["linear_probe"]
    assert lp["mode"] == "use" and lp["steps"] == 40 and 0 <= lp["best_step"] <= 40
    first, last = lp["train_bce_first_last"]
    assert last < first  # the probe trained
    head = load_file(str(run / "head.safetensors"))
    assert head["feat_scale"].min() > 1.0 or head["feat_scale"].max() != 1.0  # standardising statistics
    assert head["feat_mean"].abs().sum() > 0
    # the feature cache written from the frozen pass equals what the saved teacher computes
    model, tok = load_teacher(run, str(wd / "llama"), len(m["labels"]), m["pooling"])
    art = Artifact(wd / "data" / "mimic3")
    train = load_samples(art, "train")
    ps = make_prompts(train, art.vocab, tok, m["prompt"]["options"], m["max_length"])
    again = run_teacher(model, tok, ps, np.arange(len(train)), 16, m["max_length"], "cpu", want="features")
    cache = FeatureCache.load(run / "features" / "train.safetensors")
    got = cache.lookup([s.subject_id for s in train]).numpy()
    np.testing.assert_allclose(got, again, rtol=2e-3, atol=2e-3)  # fp16 storage


def test_linear_probe_skipped_leaves_head_at_init(wd):
    a = _train(wd, "skip1", linear_probe="skip", feature_norm="standardize", max_steps=0)
    m = json.loads((a / "manifest.json").read_text())
    assert m["recipe"]["linear_probe"] == {"mode": "skip"} and m["recipe"]["feature_norm"] == "standardize"
    from leadercli.models.teacher import label_log_odds

    bias = load_file(str(a / "head.safetensors"))["head.bias"]
    torch.testing.assert_close(bias, label_log_odds(torch.from_numpy(_train_labels(wd))))


def _bce(y: np.ndarray, q: np.ndarray) -> float:
    q = np.broadcast_to(q, y.shape).clip(1e-6, 1 - 1e-6)
    return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())


def test_loss_starts_at_and_falls_below_frequency_loss(wd):
    """The head starts at the popularity loss (log-odds bias) and a few probe steps take it below; the
    reference's bias-free head starts near log 2 (p = 0.5 for every drug)."""
    y = _train_labels(wd)
    freq_bce = _bce(y, y.mean(0, keepdims=True))
    run = _train(wd, "ft", lp_epochs=30, max_steps=0)
    first, last = json.loads((run / "manifest.json").read_text())["recipe"]["linear_probe"][
        "train_bce_first_last"
    ]
    assert abs(first - freq_bce) < 0.03, (first, freq_bce)
    assert last < freq_bce - 0.05, (last, freq_bce)
    run = _train(wd, "ft-nobias", head_bias="none", feature_norm="none", lp_epochs=30, max_steps=0)
    first, last = json.loads((run / "manifest.json").read_text())["recipe"]["linear_probe"][
        "train_bce_first_last"
    ]
    assert abs(first - np.log(2)) < 0.03 and first > freq_bce + 0.05, (first, freq_bce)


def test_fine_tuning_after_the_probe(wd):
    """LoRA steps after the probe: warm-up and the two learning rates are recorded, evaluations at least once
    per epoch (9 steps of 36 patients here), and the best of probe and LoRA steps is kept."""
    run = _train(wd, "ft2", lp_epochs=20, max_steps=20, eval_every=10, grad_accum=1, lr=3e-3, head_lr=1e-3)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [9, 18, 20]
    m = json.loads((run / "manifest.json").read_text())
    assert m["training"]["steps"] == 20 and m["recipe"]["warmup_steps"] == 1
    assert m["recipe"]["lr_lora"] == 3e-3 and m["recipe"]["lr_head"] == 1e-3
    assert m["recipe"]["linear_probe"]["mode"] == "use"
    # the probed head is step 0: LoRA steps replace it only when they beat it on the validation sample
    tr, lp_val = m["training"], m["recipe"]["linear_probe"]["val_prauc"]
    assert tr["best_step"] in (0, 9, 18, 20) and tr["best_val_prauc"] >= lp_val
    assert tr["best_val_prauc"] == max([lp_val] + [r["val_prauc"] for r in log])
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    moved = any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    assert moved == (tr["best_step"] > 0)  # LoRA B starts at zero


def test_dropout_masks_fast_is_reproducible_and_torch_differs(wd):
    """`teacher.dropout_masks`: the fast masks give the same run twice for one seed; torch's masks are another
    random stream (another loss path), and the choice is recorded."""

    def losses(name: str, **kw) -> list[float]:
        run = _train(wd, name, lp_epochs=5, max_steps=6, eval_every=3, grad_accum=1, **kw)
        assert json.loads((run / "manifest.json").read_text())["recipe"]["dropout_masks"] == kw.get(
            "dropout_masks", "fast"
        )
        return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]

    a, b = losses("masks_a"), losses("masks_b")
    c = losses("masks_torch", dropout_masks="torch")
    assert a == b and len(a) == 2
    assert a != c and all(abs(x - y) < 0.1 for x, y in zip(a, c, strict=True))  # other masks, same training


def test_length_buckets_cover_every_sample_once_per_epoch():
    from leadercli.training.teacher import epoch_batches

    lengths = np.random.default_rng(0).integers(10, 500, size=203)
    batches = epoch_batches(lengths, 8, seed=1, epoch=0, buckets=True)
    flat = np.concatenate(batches)
    assert len(batches) == 26 and all(len(b) == 8 for b in batches)
    assert set(flat.tolist()) == set(range(203)) and len(flat) == 208  # 5 wrapped to fill the last batch
    assert [b.tolist() for b in batches] == [
        b.tolist() for b in epoch_batches(lengths, 8, seed=1, epoch=0, buckets=True)
    ]
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    plain = np.mean([np.ptp(lengths[b]) for b in epoch_batches(lengths, 8, 1, 0, buckets=False)])
    assert spread < plain / 3  # similar lengths share a batch


def test_fine_tuning_epochs_default_by_device():
    from leadercli.settings import TeacherSettings
    from leadercli.training.teacher_run import epochs

    assert epochs(TeacherSettings(), torch.device("cpu")) == 0.0  # linear probe only on CPU
    assert epochs(TeacherSettings(), torch.device("cuda")) == 3.0
    assert epochs(TeacherSettings(epochs=1.5), torch.device("cpu")) == 1.5
