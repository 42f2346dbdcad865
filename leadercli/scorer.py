"""A loaded run, ready to score patients: the one object through which `leader predict`, `leader report`,
`leader report --predictions` (via the predictions file predict wrote), the Python API and the benchmarks
score, so that a run gives the same scores wherever it is used (issue 20 item 4).

- `Scorer`: what every kind shares — the run's vocab and label order, decision threshold, history length, the
  encoder that counts unknown codes, its DDI pairs, its training drug frequencies (`prior`), and the output
  rules that are part of the model's output;
- `TensorScorer` (student tensors in: student, distilled, the baselines) and `TeacherScorer` (prompts in);
- `TENSOR_MODELS`: how each tensor kind's model is rebuilt from `model.safetensors` and its manifest.

The output rules, in order: the run's calibrator (`calibration.json`, temperature scaling fitted on the
validation split after training, `leadercli.calibration`; runs saved without one are left as they were), then
the unknown-code shrink (benchmarks/README.md, cold start: on records whose codes the
model never saw a learned model falls below the popularity floor): for a learned kind (`kinds.LEARNED`), the
probabilities p of a patient become p' = (1 − w)·p + w·prior with w = min(1, λ·u), u the share of the target
visit's diagnosis and procedure codes that the run does not know and λ = `predict.unknown_shrink` (one
default, the settings'). Baselines read no codes (popularity) or only drugs (previous): they are left as they
are.

`runs.load_run(path)` reads and checks a run folder and builds its scorer (importing this module only then:
torch stays out of the commands' argument checks); this module reads no manifest or vocab itself. The
teacher's modules and the field's models are imported when a run of theirs is loaded (a student run never
imports transformers).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from leadercli import code_titles, console, kinds
from leadercli.data.batching import PAD, UNK_DIAG, UNK_PROC, Encoder, UnknownCounter
from leadercli.errors import ArtifactError
from leadercli.models.baselines import PopularityModel, PreviousVisitModel
from leadercli.models.student import StudentConfig, StudentModel
from leadercli.settings import PredictSettings


def default_unknown_shrink() -> float:
    """The one default of λ: the `predict.unknown_shrink` setting's."""
    return float(PredictSettings.model_fields["unknown_shrink"].default)


def shrink_unknown(probs, n_unknown, n_codes, prior, lam: float):
    """(B, M) probabilities → p' = (1 − w)·p + w·prior, w = min(1, λ·u), u = n_unknown / n_codes (B,)."""
    u = n_unknown.float() / n_codes.clamp(min=1).float()  # (B,)
    w = (lam * u).clamp(max=1.0).unsqueeze(1)  # (B, 1)
    return (1 - w) * probs + w * prior.unsqueeze(0)  # (B, M)


def batch_unknown(batch: dict):
    """(n_unknown, n_codes), each (B,) int64: the target visit's diagnosis and procedure codes that map to UNK,
    and all of them. `Encoder.encode_frame(labels=False)` batches carry them; a collated batch is counted from
    its id tensors (the target is each patient's last visit in `visit_mask`)."""
    if "n_unknown" in batch:
        return batch["n_unknown"], batch["n_codes"]
    rows = torch.arange(batch["visit_mask"].shape[0])  # (B,)
    last = batch["visit_mask"].sum(1) - 1  # (B,)
    diag, proc = batch["diag"][rows, last], batch["proc"][rows, last]  # (B, S)
    n_unknown = (diag == UNK_DIAG).sum(1) + (proc == UNK_PROC).sum(1)  # (B,)
    n_codes = (diag != PAD).sum(1) + (proc != PAD).sum(1)  # (B,)
    return n_unknown, n_codes


def samples_unknown(samples, encoder: Encoder):
    """(n_unknown, n_codes), each (N,) int64, of the samples' target visits, as `batch_unknown` counts them."""
    unknown, codes = [], []
    for s in samples:
        t = s.target
        unknown.append(
            sum(c not in encoder.diag_ids for c in t.diagnoses)
            + sum(c not in encoder.proc_ids for c in t.procedures)
        )
        codes.append(len(t.diagnoses) + len(t.procedures))
    return torch.tensor(unknown, dtype=torch.int64), torch.tensor(codes, dtype=torch.int64)


class Scorer:
    """A run ready to score patients. Attributes: `kind`, `path` (None for a model fitted in memory),
    `manifest`, `vocab` (the run's copy), `labels` (drug order of every score matrix), `threshold` (the run's
    decision threshold), `max_visits` (history the run reads), `encoder` (student tensors; it also counts
    unknown codes), `tensor_input` (True when `score_batch` works), `unknown_shrink` (λ), `calibrator`."""

    tensor_input = False

    def __init__(
        self,
        path: Path | None,
        manifest: dict,
        vocab,
        threshold: float,
        max_visits: int,
        device=None,
        unknown_shrink: float | None = None,
        prior: list[float] | None = None,
        ddi_path: Path | None = None,
        calibrator=None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.manifest = manifest
        self.kind = manifest["kind"]
        self.device = device if device is not None else torch.device("cpu")
        self.vocab = vocab
        self.labels = list(vocab.medications.codes)
        self.encoder = Encoder(vocab)
        self.threshold = float(threshold)
        self.max_visits = int(max_visits)
        self.unknown_shrink = default_unknown_shrink() if unknown_shrink is None else float(unknown_shrink)
        self._prior = None if prior is None else torch.tensor(prior, dtype=torch.float32)  # (M,)
        self._ddi_path = ddi_path
        self._ddi = None
        self.calibrator = calibrator  # a calibration.Calibrator, or None

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else self.kind

    @property
    def shrinks(self) -> bool:
        """True when the unknown-code shrink changes this run's scores (a learned kind, λ > 0, a prior)."""
        return self.kind in kinds.LEARNED and self.unknown_shrink > 0 and self._prior is not None

    def with_unknown_shrink(self, lam: float | None) -> Scorer:
        """This run with another λ (None: this one's); the model is shared, not copied."""
        if lam is None or float(lam) == self.unknown_shrink:
            return self
        other = copy.copy(self)
        other.unknown_shrink = float(lam)
        return other

    def output(self, probs, n_unknown, n_codes):
        """The run's output rules applied to its model's (B, M) CPU probabilities: calibration, then the
        unknown-code shrink (towards the training frequencies, themselves probabilities)."""
        if self.calibrator is not None:
            probs = self.calibrator.apply_torch(probs)
        if not self.shrinks:
            return probs
        return shrink_unknown(probs, n_unknown, n_codes, self._prior, self.unknown_shrink)

    def unknown_note(self) -> str:
        """What this run's scores do with codes it does not know (for `leader predict`'s warning)."""
        row = kinds.BY_NAME[self.kind]
        if not row.learned:
            return f"{row.unknown_codes}; unknown codes do not change its scores"
        if self.shrinks:
            how = (
                f"its scores lean towards the training drug frequencies by min(1, {self.unknown_shrink:g} × the "
                "unknown share) (predict.unknown_shrink)"
            )
        else:
            how = "no shrink towards the training drug frequencies (predict.unknown_shrink is 0)"
        return f"{row.unknown_codes}; {how}"

    def score_batch(self, batch):
        raise NotImplementedError(f"a {self.kind} run does not read student tensors")

    def score_samples(self, samples, batch_size: int = 256, vocab=None, progress: str | None = None):
        """`Sample`s → probabilities (N, M) float32, in the order of `self.labels`, output rules applied.
        `vocab` may add titles of codes the run does not know (the teacher's prompts name them; other kinds
        ignore it)."""
        raise NotImplementedError

    def parameters(self) -> dict[str, int]:
        return dict(self.manifest.get("parameters", {}))

    def ddi_pairs(self):
        """The run's interacting drug pairs as label-index pairs (K, 2) int64 (empty without a DDI file)."""
        if self._ddi is None:
            pairs = np.zeros((0, 2), np.int64)
            path = self._ddi_path
            if path is not None and path.is_file():
                try:
                    df = pl.read_parquet(path, columns=["atc3_a", "atc3_b"])
                except (pl.exceptions.PolarsError, OSError):
                    raise ArtifactError(
                        f"{path} is unreadable", kinds.rebuild_hint(self.path, self.kind)
                    ) from None
                idx = self.vocab.medications.index
                got = [(idx[a], idx[b]) for a, b in df.iter_rows() if a in idx and b in idx]
                pairs = np.asarray(got, dtype=np.int64).reshape(-1, 2)
            self._ddi = pairs
        return self._ddi

    def prior(self):
        """The training split's drug frequencies (M,) float32 tensor, or None for runs made before the manifest
        recorded them whose artifact is gone."""
        return self._prior

    def reset_unknown(self) -> None:
        self.encoder.unknown = UnknownCounter()


class TensorScorer(Scorer):
    """Student, distilled, popularity and previous-visit runs: student tensors in, probabilities out.
    `module` is the model (`probs(batch)` → (B, M)); without it, it is loaded from `model_file`."""

    tensor_input = True

    def __init__(self, *args, module=None, model_file: Path | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        if module is None:
            module = load_tensor_model(model_file, self.manifest, self.encoder)
        self.module = module.eval().to(self.device)

    def score_batch(self, batch):
        """A collated batch (`Encoder.collate` / `encode_frame`) → (B, M) probabilities on the CPU."""
        with torch.inference_mode():
            b = {k: v.to(self.device) for k, v in batch.items()}
            probs = self.module.probs(b).float().cpu()  # (B, M)
        if self.shrinks:
            return self.output(probs, *batch_unknown(batch))
        return self.output(probs, None, None)  # the calibrator alone needs no code counts

    def score_samples(self, samples, batch_size: int = 256, vocab=None, progress: str | None = None):
        enc = self.encoder.encode_all(samples)
        out = []
        with console.progress(progress or "scoring", total=len(enc)) as advance:
            for i in range(0, len(enc), batch_size):
                chunk = enc[i : i + batch_size]
                out.append(self.score_batch(self.encoder.collate(chunk)).numpy())
                advance(len(chunk))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)


class TeacherScorer(Scorer):
    """A teacher run: prompts rendered from the samples, backbone + LoRA + head, probabilities out."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        from leadercli.models.teacher_infer import load_trained  # transformers: teacher runs only

        self.model, self.tokenizer = load_trained(self.path, self.manifest, self.device)
        self.module = self.model

    def score_samples(self, samples, batch_size: int = 16, vocab=None, progress: str | None = None):
        """Probabilities (N, M); `vocab` may be the run's vocab extended with titles of unseen codes."""
        # transformers (through teacher_infer): imported for teacher runs only
        from leadercli.models.teacher_infer import make_prompts, run_teacher

        m = self.manifest
        ps = make_prompts(
            samples, vocab or self.vocab, self.tokenizer, m["prompt"]["options"], m["max_length"]
        )
        probs = run_teacher(
            self.model,
            self.tokenizer,
            ps,
            np.arange(len(samples)),
            batch_size,
            m["max_length"],
            self.device,
            progress=progress or "teacher scoring",
        )  # (N, M)
        if not self.shrinks and self.calibrator is None:
            return probs
        return self.output(torch.from_numpy(probs), *samples_unknown(samples, self.encoder)).numpy()


# -- tensor models: kind → how its model is rebuilt from model.safetensors and the manifest -----------------
class WeightsMismatch(ValueError):
    """A builder's complaint about `model.safetensors` (not about the manifest's model_config)."""


def _student(state: dict, manifest: dict, encoder: Encoder):
    cfg = manifest.get("model_config")
    if not isinstance(cfg, dict):
        raise ValueError("the manifest has no model_config")
    return StudentModel(StudentConfig(**cfg))


def _baseline(state: dict, manifest: dict, encoder: Encoder):
    if "freq" not in state or state["freq"].shape != (encoder.n_labels,):
        raise WeightsMismatch("drug frequencies")
    freq = state["freq"]
    if manifest["kind"] == "popularity":
        return PopularityModel(freq)
    return PreviousVisitModel(freq, encoder.med_offset)


def _field(state: dict, manifest: dict, encoder: Encoder):
    from leadercli.models.field_build import rebuild  # each kind's model module: when a run of it is loaded

    return rebuild(state, manifest, encoder)


TENSOR_MODELS = {
    "student": _student,
    "distilled": _student,
    "popularity": _baseline,
    "previous": _baseline,
    **{k: _field for k in kinds.FIELD_MODELS},  # models/field_build.py
}


def load_tensor_model(path: Path, manifest: dict, encoder: Encoder):
    """`model.safetensors` of a tensor kind → its model with the weights loaded (safetensors only: a pickle, or
    any other file, in its place is refused here, never unpickled)."""
    kind = manifest["kind"]
    hint = kinds.rebuild_hint(path.parent, kind)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing", hint)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(
            f"{path} is not a readable safetensors file (truncated or another format; {type(exc).__name__})",
            hint,
        ) from None
    try:
        model = TENSOR_MODELS[kind](state, manifest, encoder)
    except WeightsMismatch as exc:
        raise ArtifactError(f"{path} does not fit its manifest ({exc})", hint) from None
    except Exception as exc:  # noqa: BLE001 - any other failure to build the model means a damaged model_config
        why = (
            str(exc).splitlines()[0][:120] if isinstance(exc, ValueError) and str(exc) else type(exc).__name__
        )
        raise ArtifactError(
            f"{path.parent / 'manifest.json'}: model_config does not describe a {kind} model ({why})", hint
        ) from None
    if kind in kinds.BASELINES:
        return model  # built from the state itself
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{path} does not fit its manifest ({str(exc).splitlines()[0][:120]})", hint
        ) from None
    code_titles.attach(model, path.parent, manifest)  # a title-reading student's table (its own file)
    return model
