"""Score a `leader predict` file against the artifact's test split: the report dict of
`leader report --predictions recs.csv`.

The file (subject_id, hadm_id, rank, atc3, score, selected; CSV or parquet) is matched to the test patients
by subject_id; a drug absent from a patient's rows scores 0; the threshold is the lowest `score` among
selected rows (checked: selected ⇔ score ≥ threshold). Test patients missing from the file are left out
(counted in the report), other subjects are ignored. The popularity floor is fitted on the artifact's
training split (`report/floor.py`) and scored on the same patients. No printing: progress lines go to the `log`
callback.

The scores in the file are the run's `Scorer` output (`leader predict`, output rules applied), so a file that
holds every drug of every test patient (`--top-k` = the number of drugs) gives the metrics `leader report RUN`
gives for that run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from leadercli.data.artifact import Artifact
from leadercli.errors import InputError, SettingsError
from leadercli.report import evaluate
from leadercli.report.floor import fit_floor
from leadercli.report.score_runs import (
    SETTINGS_ARTIFACT,
    Log,
    artifact_block,
    quiet,
    test_samples,
    unique_names,
)

PREDICTION_COLUMNS = ("subject_id", "hadm_id", "atc3", "score", "selected")


def read_predictions(path: Path):
    if not path.is_file():
        raise InputError(
            f"predictions file {path} does not exist", "Write one with `leader predict ... -o recs.csv`"
        )
    try:
        df = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - polars raises several error types for unreadable files
        raise InputError(
            f"{path} is not a readable CSV/parquet file ({type(exc).__name__})",
            "Pass a `leader predict` output",
        ) from None
    for col in PREDICTION_COLUMNS:
        if col not in df.columns:
            raise InputError(
                f"{path}: column '{col}' is missing",
                f"A predictions file has columns {', '.join(PREDICTION_COLUMNS)}",
            )
    try:
        if df.schema["selected"] == pl.Utf8:
            df = df.with_columns(pl.col("selected").str.to_lowercase().is_in(["true", "1"]).alias("selected"))
        df = df.with_columns(
            pl.col("subject_id").cast(pl.Int64),
            pl.col("hadm_id").cast(pl.Int64),
            pl.col("atc3").cast(pl.Utf8),
            pl.col("score").cast(pl.Float64),
            pl.col("selected").cast(pl.Boolean),
        )
    except pl.exceptions.PolarsError:
        raise InputError(
            f"{path}: columns have unexpected types", "Pass the file as written by `leader predict`"
        ) from None
    if df.height == 0:
        raise InputError(f"{path} has no rows", "Pass a non-empty predictions file")
    cols = list(PREDICTION_COLUMNS)
    if df.select(pl.any_horizontal(pl.col(cols).is_null()).any()).item():
        raise InputError(f"{path}: has empty values", "Pass the file as written by `leader predict`")
    return df


def inferred_threshold(path: Path, score: np.ndarray, selected: np.ndarray) -> dict:
    how = "inferred from the predictions file: lowest score among selected drugs"
    if selected.any():
        t = float(score[selected].min())
        if t <= 0 or (~selected & (score >= t)).any():
            raise InputError(
                f"{path}: 'selected' is not 'score >= one threshold' (a selected score is not above every unselected one)",
                "Pass the file as written by `leader predict`",
            )
        return {"value": t, "how": how}
    top = float(score.max()) if len(score) else 0.0
    return {
        "value": float(np.nextafter(max(top, 0.0), np.inf)),
        "how": "no drug selected in the predictions file",
    }


@dataclass
class Matched:
    """The file's rows matched to the test patients: scores in the label order of the covered patients."""

    y_prob: np.ndarray  # (C, M) float64; a drug absent from a patient's rows scores 0
    y_true: np.ndarray  # (C, M) bool
    n_visits: np.ndarray  # (C,)
    threshold: dict
    covered: int
    test_patients: int
    ignored: int  # subjects of the file that are not test patients
    rows: int
    top_k: int


def score_predictions(
    settings, predictions_path: Path, name: str | None = None, log: Log | None = None
) -> dict:
    """Evaluate a predictions file (and the popularity floor) on the test patients it covers; returns the
    report dict (numpy arrays inside; `write.jsonable` converts)."""
    log = log or quiet
    if settings.samples.per_visit:
        raise SettingsError(
            "samples.per_visit is on, but a predictions file holds one visit per patient", "Turn it off"
        )
    path = Path(predictions_path)
    df = read_predictions(path)
    artifact = Artifact(settings.artifact_dir())
    ddi = artifact.ddi_index_pairs()
    got = match_test_patients(path, df, artifact)
    rcfg = settings.report
    name, floor_name = unique_names([name or path.stem, "popularity"])
    entry, reps = evaluate.evaluate_scores(
        name, got.y_true, got.y_prob, got.n_visits, got.threshold, ddi, rcfg
    )
    entry = {
        "name": name,
        "kind": "predictions",
        "run_dir": None,
        "fitted_by_report": False,
        **{k: v for k, v in entry.items() if k != "name"},
        "predictions": {
            "path": str(path.resolve()),
            "rows": got.rows,
            "top_k": got.top_k,
            "test_patients": got.test_patients,
            "matched_test_patients": got.covered,
            "missing_test_patients": got.test_patients - got.covered,
            "ignored_other_subjects": got.ignored,
            "absent_drugs": "score 0 (not in the patient's rows)",
        },
        "efficiency": None,
    }
    if got.covered < got.test_patients:
        log(
            f"warning: {got.test_patients - got.covered} test patient(s) are not in {path}; evaluated on the rest"
        )
    log(
        f"{name}: {got.covered} test patients, up to {got.top_k} rows each, threshold "
        f"{got.threshold['value']:.4g}"
    )
    floor = fit_floor(artifact, settings)
    # PopularityModel.probs gives every patient the training frequencies: the same matrix, without batches
    p_pop = np.broadcast_to(floor.frequency, got.y_true.shape)
    pop, pop_reps = evaluate.evaluate_scores(
        floor_name, got.y_true, p_pop, got.n_visits, floor.threshold, ddi, rcfg
    )
    pop = {
        "name": floor_name,
        "kind": "popularity",
        "run_dir": None,
        "fitted_by_report": True,
        **{k: v for k, v in pop.items() if k != "name"},
        "efficiency": None,
    }
    entries = [entry, pop]
    comparison = evaluate.compare(entries, [reps, pop_reps], floor_index=1)
    report = evaluate.assemble(
        "predictions",
        artifact_block(artifact, SETTINGS_ARTIFACT),
        artifact,
        got.y_true,
        got.n_visits,
        ddi,
        settings,
        floor.frequency,
        entries,
        comparison,
    )
    report["efficiency"] = None
    return report


def match_test_patients(path: Path, df, artifact: Artifact) -> Matched:
    """The file's rows of test patients → their score matrix; InputError when a row names another visit than
    the patient's last one, a drug outside the label list, or a (subject, drug) pair twice."""
    samples = test_samples(artifact, 1, False)
    y_all = evaluate.multi_hot(samples, artifact.vocab.medications.index)
    row_of = {s.subject_id: i for i, s in enumerate(samples)}
    hadm_of = {s.subject_id: s.hadm_id for s in samples}
    sid = df["subject_id"].to_numpy()
    in_test = np.asarray([s in row_of for s in sid], dtype=bool)
    ignored = len({int(s) for s in sid[~in_test]})
    df = df.filter(pl.Series(in_test))
    if df.height == 0:
        raise InputError(
            f"{path}: none of its subjects is a test patient of artifact {artifact.path}",
            "Predict on the artifact's visits (`leader predict data/<source>/visits.parquet -o recs.csv`)",
        )
    _check_rows(path, df, hadm_of, artifact.vocab.medications.index)
    label_idx = artifact.vocab.medications.index
    rows = np.asarray([row_of[s] for s in df["subject_id"].to_list()])
    cols = np.asarray([label_idx[c] for c in df["atc3"].to_list()])
    score = df["score"].to_numpy().astype(np.float64)
    threshold = inferred_threshold(path, score, df["selected"].to_numpy().astype(bool))
    covered = np.unique(rows)
    y_prob = np.zeros(y_all.shape, dtype=np.float64)
    y_prob[rows, cols] = score
    return Matched(
        y_prob[covered],
        y_all[covered],
        np.asarray([samples[i].n_visits for i in covered]),
        threshold,
        int(len(covered)),
        len(samples),
        ignored,
        int(df.height),
        int(df.group_by("subject_id").len()["len"].max()),
    )


def _check_rows(path: Path, df, hadm_of: dict, label_idx: dict) -> None:
    bad_visit = {
        int(s)
        for s, h in zip(df["subject_id"].to_list(), df["hadm_id"].to_list(), strict=True)
        if hadm_of[s] != h
    }
    if bad_visit:
        raise InputError(
            f"{path}: {len(bad_visit)} test patient(s) were predicted for another visit than their last one",
            "Predict on the artifact's visits.parquet so the latest visit is the test target",
        )
    unknown = sorted({c for c in df["atc3"].unique().to_list() if c not in label_idx})
    if unknown:
        raise InputError(
            f"{path}: {len(unknown)} drug code(s) are not in the artifact's label list (e.g. {unknown[0]})",
            "Predict with a model trained on this artifact, or pass its artifact with --data",
        )
    if df.select(["subject_id", "atc3"]).is_duplicated().any():
        raise InputError(
            f"{path}: a (subject_id, atc3) pair appears twice", "Pass the file as written by `leader predict`"
        )
