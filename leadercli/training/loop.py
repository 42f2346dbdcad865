"""Student components shared by `leader train student` and `leader distill` (components, not a base class;
the recipes never import each other): data setup, the model from settings, the training loop, evaluation and
the run's final files. The loop: Adam, constant LR (the reference's StepLR(gamma=0) zeroes it — §7.22), early stopping on
validation PRAUC with patience, a safetensors checkpoint after every epoch for `--resume`, best weights kept.

Determinism: the epoch's shuffling is a pure function of (seed, epoch), dropout draws from torch's global RNG
which the checkpoint saves — so an interrupted and resumed run reaches the same weights as an uninterrupted one.
On CPU the student's masks are drawn by the batch thread from the same generator, continued in numpy, and the
generator's state is handed back to torch after each epoch (`training/batches.py`, `models/torch_masks.py`).

`fit` trains any `nn.Module` whose `forward(batch)` takes the padded batch dict of `data/batching.py` and
returns logits (B, M), or an object with `.logits`; see its docstring.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from leadercli import checkpoint as ckpt_io
from leadercli import console, metrics, runs
from leadercli.calibration import calibrate_splits, write_for_run
from leadercli.card import write_card
from leadercli.data.artifact import Artifact
from leadercli.data.batching import Encoded, Encoder, batches
from leadercli.data.samples import load_samples
from leadercli.errors import ArtifactError
from leadercli.metrics import choose_threshold
from leadercli.models import torch_masks
from leadercli.models.field import make_optimizer
from leadercli.models.student import StudentConfig, StudentModel
from leadercli.models.torch_masks import MaskTape
from leadercli.modes import fix_tree
from leadercli.settings import Settings
from leadercli.training import distributed
from leadercli.training.batches import Ahead, EpochBatches

# extra(model_output, batch) -> {term name: (weight, loss tensor)}
ExtraLoss = Callable[[object, dict[str, torch.Tensor]], dict[str, tuple[float, torch.Tensor]]]


@dataclass
class FitResult:
    best_epoch: int  # 1-based (the train_log and console numbering)
    best_val_prauc: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Training wall time: the epochs' training passes and validations (resumed epochs included, from the
        log); what `leader report` shows as training time."""
        return float(sum(r.get("seconds", 0.0) for r in self.history))


@torch.no_grad()
def score(
    model, encoded: list[Encoded], encoder: Encoder, batch_size: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Probabilities, labels and groups for a list of encoded samples (eval mode)."""
    model.eval()
    probs, labels, nv = [], [], []
    for batch in batches(encoded, batch_size, encoder.collate):
        b = {k: v.to(device) for k, v in batch.items()}
        p = model.probs(b) if hasattr(model, "probs") else torch.sigmoid(_logits(model(b)))
        probs.append(p.cpu().float().numpy())
        labels.append(batch["labels"].numpy() > 0)
        nv.append(batch["n_visits"].numpy())
    M = encoder.n_labels
    return {
        "probs": np.concatenate(probs) if probs else np.zeros((0, M), np.float32),
        "labels": np.concatenate(labels) if labels else np.zeros((0, M), bool),
        "n_visits": np.concatenate(nv) if nv else np.zeros(0, np.int64),
    }


def _logits(output) -> torch.Tensor:
    """A model's output → its logits (B, M): the tensor itself, or its `.logits` (`StudentOutput`)."""
    return output if isinstance(output, torch.Tensor) else output.logits


@dataclass
class Progress:
    """Where training stands: what a checkpoint keeps besides tensors (epochs 0-based here, 1-based in logs)."""

    epoch: int = 0  # the next epoch to run
    best: float = -math.inf  # best validation PRAUC so far
    best_epoch: int = -1
    bad: int = 0  # epochs since the last gain

    def done(self, cfg) -> bool:
        return self.epoch >= cfg.epochs or (self.bad >= cfg.patience and self.epoch > 0)


def fit(
    model: torch.nn.Module,
    encoder: Encoder,
    train: list[Encoded],
    val: list[Encoded],
    cfg,  # StudentSettings: lr, weight_decay, batch_size, eval_batch_size, epochs, patience, seed
    out: Path,
    device: torch.device,
    resume: bool,
    extra: ExtraLoss | None = None,
    extra_modules: torch.nn.Module | None = None,
    prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ahead: Ahead | None = None,
) -> FitResult:
    """Train `model` in place (Adam, BCE + `extra` terms, early stopping on validation PRAUC, a checkpoint per
    epoch); on return it holds the best-validation weights.

    `model(batch)` takes the padded batch dict of `data/batching.py` and returns the logits (B, M) or an object
    with `.logits` (`StudentOutput`); validation scores with `model.probs(batch)` when the model has it, else
    the sigmoid of the logits. `extra(output, batch)` adds weighted loss terms, `extra_modules` are trained
    with the model, `prepare(batch)` adds inputs on the device. `ahead(batch, stream)`: on CPU, prepares each
    batch in the batch thread and draws its dropout masks from `stream`, the ones torch would draw
    (`models/student_train.prepare`, `training/batches.py`)."""
    holder = torch.nn.ModuleDict(
        {"model": model, **({"extra": extra_modules} if extra_modules is not None else {})}
    )
    # Adam unless the model names its authors' optimizer (a field model, `models/field.py`); foreach: one
    # kernel per step and state tensor for all parameters, the same arithmetic as the loop
    name = getattr(model, "optimizer", "adam")
    optimizer = make_optimizer(holder.parameters(), name, cfg.lr, cfg.weight_decay)
    ckpt = out / ckpt_io.CHECKPOINT_DIR
    dist = distributed.current(device)  # data-parallel when the recipe joined a process group
    distributed.check_batch(cfg.batch_size, dist)
    progress, history = _resume(holder, optimizer, cfg, out, resume, dist.main)
    distributed.broadcast_module(holder, dist)  # every process starts from the main process's weights
    ckpt.mkdir(parents=True, exist_ok=True)
    tape = _tape_masks(holder, device) if ahead is not None else None
    step = _Step(model, optimizer, extra, prepare, device, tape, dist)
    while not progress.done(cfg):
        if hasattr(model, "set_epoch"):  # per-epoch schedules of a field model (GAMENet's DDI temperature)
            model.set_epoch(progress.epoch)
        distributed.seed_epoch(cfg.seed, progress.epoch, dist)  # before the batch thread copies torch's RNG
        holder.train()
        t0 = time.perf_counter()
        record = {
            "epoch": progress.epoch + 1,
            **_train_epoch(step, train, encoder, cfg, progress.epoch, ahead),
        }
        if dist.main:  # the main process evaluates, logs and checkpoints; the others wait for its counters
            _end_epoch(holder, optimizer, record, val, encoder, cfg, out, device, progress, t0)
        distributed.share_fields(progress, dist)  # its early-stop decision included
        history.append(record)
    distributed.all_done(dist)  # every process finished training before the main one writes a finished run
    if dist.main and (ckpt / "best.safetensors").is_file():
        model.load_state_dict(load_file(str(ckpt / "best.safetensors")))
    return FitResult(progress.best_epoch + 1, float(progress.best), progress.epoch, history)


def _resume(
    holder, optimizer, cfg, out: Path, resume: bool, main: bool = True
) -> tuple[Progress, list[dict]]:
    """The last checkpoint's progress and log (`--resume`), else a fresh start (saying why when asked to resume)."""
    ckpt = out / ckpt_io.CHECKPOINT_DIR
    if resume and ckpt_io.exists(ckpt / "last"):
        st = ckpt_io.load_state(ckpt / "last", ckpt_io.module_tensors(holder), optimizer)
        progress = Progress(st["epoch"] + 1, st["best"], st["best_epoch"], st["bad"])
        history = [r for r in runs.read_log(out) if r.get("epoch", 0) <= progress.epoch]  # 1-based epochs
        if main:  # every process reads the checkpoint; the main process alone writes the run folder
            (out / runs.LOG).write_text("".join(json.dumps(r) + "\n" for r in history))
        console.info(
            f"resuming after epoch {progress.epoch}/{cfg.epochs} "
            f"(best val PRAUC {progress.best:.4f} at epoch {progress.best_epoch + 1})"
        )
        return progress, history
    if resume and (ckpt / "last").exists():  # a checkpoint folder without both files: say so, start over
        console.info(f"warning: {ckpt / 'last'} is incomplete (killed while writing?): starting from epoch 1")
    elif resume:
        console.info(f"no checkpoint in {ckpt}: nothing to resume, starting from epoch 1")
    return Progress(), []


def _tape_masks(holder: torch.nn.Module, device: torch.device) -> MaskTape | None:
    """Route the dropout modules through a mask tape when torch's CPU masks can be drawn ahead, else None."""
    if device.type != "cpu" or not torch_masks.available():
        return None
    tape = torch_masks.MaskTape()
    tape.install(holder)
    return tape


@dataclass
class _Step:
    """One optimisation step on one batch: forward, BCE + extra terms, backward, Adam."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    extra: ExtraLoss | None
    prepare: Callable | None
    device: torch.device
    tape: MaskTape | None = None  # the dropout modules' masks, when drawn ahead
    dist: distributed.Dist | None = None  # data-parallel: gradients averaged over the processes' shares
    names: list[str] = field(default_factory=list)  # the loss terms, for a process with an empty share

    def __call__(self, batch: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        """`weight`: this process's share of the global batch's rows (1 for one process)."""
        from leadercli.models.losses import bce_loss

        self.optimizer.zero_grad(set_to_none=True)
        if batch:  # a share of the last global batch can be empty (fewer rows than processes)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            if self.prepare is not None:
                batch = self.prepare(batch)
            output = self.model(batch)
            loss = bce_loss(_logits(output), batch["labels"])
            terms = {"bce": loss.detach()}
            if self.extra is not None:
                for name, (w, t) in self.extra(output, batch).items():
                    loss = loss + w * t
                    terms[name] = t.detach()
            loss.backward()
            terms["loss"] = loss.detach()
            self.names = list(terms)
        else:
            terms = {k: torch.zeros((), device=self.device) for k in self.names}
        if self.dist is not None and self.dist.active:  # the global batch's gradient and terms
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            summed = distributed.sync_grads(params, weight, list(terms.values()), self.dist)
            terms = dict(zip(terms, summed, strict=True))
        self.optimizer.step()
        return terms


def _train_epoch(step: _Step, train, encoder: Encoder, cfg, epoch: int, ahead) -> dict[str, float]:
    """One pass over `train`, shuffled by (seed, epoch) → the mean of each loss term over the epoch's batches."""
    n_batches = math.ceil(len(train) / cfg.batch_size)
    order = np.random.default_rng(cfg.seed * 1000 + epoch).permutation(len(train))
    dist = step.dist if step.dist is not None and step.dist.active else None
    shard = (
        (lambda rows: distributed.shard(rows, dist)) if dist else None
    )  # this process's rows of each batch
    epoch_batches = EpochBatches(
        train, cfg.batch_size, encoder.collate, order, ahead if step.tape else None, shard
    )
    sums: dict[str, float] = {}
    with console.progress(f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches) as advance:
        for k, (batch, masks) in enumerate(epoch_batches):
            if masks:
                step.tape.load(masks)
            rows = min(cfg.batch_size, len(train) - k * cfg.batch_size)  # the global batch's rows
            terms = step(batch, len(batch["labels"]) / rows if batch else 0.0)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            advance(1, status=f"loss {terms['loss'].item():.4f}")
    epoch_batches.finish()
    return {k: v / max(n_batches, 1) for k, v in sums.items()}


def _end_epoch(
    holder, optimizer, record: dict, val, encoder: Encoder, cfg, out: Path, device, progress, t0: float
) -> None:
    """Validation PRAUC, the best weights, the log line and the checkpoint after one epoch; updates `progress`
    and `record` (the main process's job once training is data-parallel). `record["seconds"]`: the epoch's wall
    time since `t0` (training pass and validation, the checkpoint not included)."""
    model = holder["model"]
    s = score(model, val, encoder, cfg.eval_batch_size, device)
    val_prauc = float(metrics.prauc(s["labels"], s["probs"]).mean()) if len(val) else 0.0
    record["val_prauc"] = val_prauc
    ckpt = out / ckpt_io.CHECKPOINT_DIR
    improved = val_prauc > progress.best
    if improved:
        progress.best, progress.best_epoch, progress.bad = val_prauc, progress.epoch, 0
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(ckpt / "best.safetensors"))
    else:
        progress.bad += 1
    record["best"] = improved
    record["seconds"] = time.perf_counter() - t0
    runs.append_log(out, record)
    skip = ("epoch", "val_prauc", "best", "seconds")
    terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in skip)
    console.info(
        f"epoch {progress.epoch + 1:3d}/{cfg.epochs}  {terms}  val PRAUC {val_prauc:.4f}"
        + ("  *" if improved else f"  (no gain {progress.bad}/{cfg.patience})")
    )
    counters = {"epoch": progress.epoch, "best": progress.best, "best_epoch": progress.best_epoch}
    ckpt_io.save_state(
        ckpt / "last", ckpt_io.module_tensors(holder), optimizer, {**counters, "bad": progress.bad}
    )
    progress.epoch += 1
    if progress.bad >= cfg.patience:
        console.info(
            f"early stop: no val PRAUC gain for {cfg.patience} epochs (best epoch {progress.best_epoch + 1})"
        )


def evaluate_run(
    model,
    encoder: Encoder,
    val: list[Encoded],
    test: list[Encoded],
    fixed_threshold,
    ddi_pairs,
    batch_size: int,
    device: torch.device,
    report_cfg,
    calibration: str = "none",
) -> dict:
    """Calibrator fitted on validation (`calibration`: the `calibration.method` setting; the scores below are
    then calibrated), threshold on validation (unless fixed), then validation and test metrics per group."""
    v = score(model, val, encoder, batch_size, device)
    t = score(model, test, encoder, batch_size, device)
    cal = calibrate_splits(calibration, {"val": v, "test": t})
    threshold = choose_threshold(fixed_threshold, v["labels"], v["probs"])
    th = threshold["value"]
    out = {"threshold": threshold, "calibration": cal}
    for name, s in (("val", v), ("test", t)):
        if len(s["labels"]) == 0:
            out[name] = None
            continue
        out[name] = metrics.evaluate_groups(
            s["labels"],
            s["probs"],
            th,
            ddi_pairs,
            s["n_visits"],
            rounds=report_cfg.bootstrap_rounds,
            fraction=report_cfg.bootstrap_fraction,
            seed=report_cfg.seed,
        )
    return out


def summary_line(result: dict) -> str:
    test = result.get("test") or {}
    o = (test.get("overall") or {}).get("point") if test else None
    if not o:
        return "no test samples"
    return (
        f"test PRAUC {o['prauc']:.4f}  Jaccard {o['jaccard']:.4f}  F1 {o['f1']:.4f}  DDI {o['ddi_rate']:.4f}"
        f"  #drugs {o['avg_drugs']:.2f}  (threshold {result['threshold']['value']:.2f}, {result['threshold']['how']})"
    )


# -- data, model and run files ---------------------------------------------------------------------------
def setup_data(settings: Settings):
    """Artifact → encoder and encoded train/val/test samples (shared with `leader distill`)."""
    artifact = Artifact(settings.artifact_dir())
    encoder = Encoder(artifact.vocab)
    sp = settings.samples
    with console.step("loading samples"):
        splits = {
            s: encoder.encode_all(load_samples(artifact, s, sp.max_visits, sp.per_visit))
            for s in ("train", "val", "test")
        }
    console.info(
        f"samples: train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])}; "
        f"{encoder.n_labels} drugs, {encoder.vocab_size} code ids"
    )
    if not splits["train"]:
        raise ArtifactError(
            f"artifact {artifact.path} has no training patients", "Re-run `leader preprocess` with more data"
        )
    return artifact, encoder, splits


def build_student(encoder: Encoder, cfg, onednn: bool = True, text: torch.Tensor | None = None):
    """The student of `cfg` (StudentSettings) for `encoder`'s vocabularies; `onednn`: `hardware.onednn`;
    `text`: the title table (V, D) of a title-reading student (`training/code_text.py`), None = ids only."""
    config = StudentConfig(
        vocab_size=encoder.vocab_size,
        n_labels=encoder.n_labels,
        med_offset=encoder.med_offset,
        profile_sizes=encoder.profile_sizes,
        hidden=cfg.hidden,
        heads=cfg.heads,
        ff=cfg.ff,
        dropout=cfg.dropout,
        attn_dropout=cfg.attn_dropout,
        head_hidden=cfg.head_hidden,
        recency=cfg.recency,
        code_text=cfg.code_text if text is not None else "none",
        text_dim=int(text.shape[1]) if text is not None else 0,
    )
    model = StudentModel(config, onednn=onednn)
    if text is not None:
        model.embed.set_text(text)
    return model, config


def save_run(out: Path, model, config, artifact: Artifact, manifest: dict, settings: Settings) -> None:
    """Final files: weights, manifest (self-describing), the artifact's vocab (predict needs no artifact)."""
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / runs.MODEL_FILE)
    )
    runs.copy_artifact_files(artifact, out)
    runs.save_settings(settings, out)
    if config is not None:
        manifest["model_config"] = asdict(config)
    manifest["parameters"] = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }

    write_for_run(out, manifest)  # calibration.json when the manifest records a calibrator
    write_card(out, manifest)  # README.md model card with Hub metadata
    fix_tree(out)  # safetensors writes 0600: the run follows the umask (group-readable under 022)
    runs.write_json(out / runs.MANIFEST, manifest)  # a manifest means the run is complete
    ckpt = out / ckpt_io.CHECKPOINT_DIR
    if ckpt.exists():
        shutil.rmtree(ckpt)
