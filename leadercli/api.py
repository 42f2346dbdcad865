"""The Python API: `from leadercli import Recommender`.

    rec = Recommender.load("runs/distilled")          # any run kind: distilled, student, teacher, baselines
    recs = rec.predict(visits)                       # polars or pandas frame in the visits schema
    recs = rec.predict_raw("new_raw/", source="mimic4")  # raw tables → `preprocess --for-run` → predict

Both return a polars DataFrame with exactly the columns and rows of the file `leader predict` writes (the same
encoding, scoring, threshold, top-k and DDI rule: `leadercli.predict.predict_frame`), sorted by subject and
rank. Nothing is written by `predict`; `predict_raw` builds its prediction input in a temporary folder (or
`out=` to keep it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from leadercli.errors import InputError
from leadercli.offline import set_offline
from leadercli.settings import load_settings


class Recommender:
    """A loaded run that ranks drugs for visits frames."""

    def __init__(self, scorer, settings=None) -> None:
        self.scorer = scorer
        self.settings = settings

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None, settings=None) -> Recommender:
        """Load a run folder of any kind (`leadercli.runs.load_run`). `device`: "cpu", "cuda", … (default cpu)."""
        set_offline()  # as the CLI does: a teacher run's backbone is never looked up on the Hub
        import torch

        from leadercli.runs import load_run

        lam = settings.predict.unknown_shrink if settings is not None else None  # None: the setting's default
        return cls(load_run(Path(run_dir), torch.device(device) if device else None, lam), settings)

    @property
    def kind(self) -> str:
        return self.scorer.kind

    @property
    def labels(self) -> list[str]:
        """The ATC-3 codes the run ranks, in score order."""
        return list(self.scorer.labels)

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    def predict(
        self,
        visits: Any,
        top_k: int = 20,
        threshold: float | None = None,
        max_ddi_pairs: int | None = None,
        titles: dict[str, dict[str, str]] | None = None,
        unknown_shrink: float | None = None,
        explain: int = 0,
        code_titles: bool | None = None,
    ):
        """Rank drugs for the latest visit of every subject in `visits` (polars or pandas DataFrame, the
        artifact's visits schema). Returns a polars DataFrame: subject_id, hadm_id, rank, atc3, drug_name,
        score, selected, ddi_dropped, n_unknown_codes. `titles` (kind → {code: title}) names codes the run
        does not know, for a teacher's prompts and a title-reading student. `unknown_shrink` (λ; None = the run's, from the
        `predict.unknown_shrink` setting) leans the scores of visits with unknown codes towards the training
        drug frequencies (the run's `Scorer` applies it, as everywhere). `explain=K` adds the list columns
        explain_codes, explain_kinds, explain_titles, explain_visits, explain_contributions: the K codes whose
        removal lowers the drug's score most (occlusion, `leadercli.explain`; one scoring pass per code).
        A run trained with `student.code_text` reads the codes it does not know by their `titles` (embedded once
        per call; `code_titles=False`, or the `predict.code_titles` setting, maps them to UNK instead)."""
        # polars/torch (predict): loaded on first use, so `leadercli.Recommender` imports fast
        import polars as pl

        from leadercli.predict import PredictOptions, predict_frame

        frame = visits if isinstance(visits, pl.DataFrame) else _from_other(visits)
        if frame.height == 0:
            raise InputError("the visits frame has no rows", "Pass at least one visit")
        self.scorer.reset_unknown()
        if code_titles is None:
            code_titles = self.settings.predict.code_titles if self.settings is not None else True
        # torch-heavy modules: loaded on first use
        from leadercli.explain import BATCH as EXPLAIN_BATCH

        opts = PredictOptions(
            top_k=top_k,
            threshold=threshold,
            max_ddi_pairs=max_ddi_pairs,
            batch_size=EXPLAIN_BATCH if explain else 4096,  # explaining: about 10k occluded copies a batch
            explain=explain,
            code_titles=code_titles,
        )
        return predict_frame(self.scorer.with_unknown_shrink(unknown_shrink), frame, opts, titles)

    def predict_raw(
        self,
        raw_dir: str | Path,
        source: str | None = None,
        out: str | Path | None = None,
        aux: str | Path | None = None,
        **predict_options,
    ):
        """Raw MIMIC tables of new patients → ranked drugs: `leader preprocess --for-run` and `predict` in one
        call. `out` keeps the prediction input folder; by default it is built in a temporary folder."""
        # polars/torch (newcohort, predict): loaded on first use
        import polars as pl

        from leadercli.newcohort import build_for_run
        from leadercli.predict import INPUT_CODES, read_titles

        settings = self.settings or load_settings(None, overrides={"paths": {"aux": aux}})
        with tempfile.TemporaryDirectory(prefix="leader-new-") as tmp:
            target = Path(out) if out is not None else Path(tmp) / "input"
            result = build_for_run(settings, self.scorer.path, Path(raw_dir), target, source)
            visits = pl.read_parquet(result.path / "visits.parquet")
            titles = read_titles(result.path / INPUT_CODES)
            return self.predict(visits, titles=titles, **predict_options)


def _from_other(visits: Any):
    # polars: loaded on first use
    import polars as pl

    try:
        return (
            pl.from_pandas(visits) if type(visits).__module__.startswith("pandas") else pl.DataFrame(visits)
        )
    except Exception:  # noqa: BLE001 - any conversion failure is the caller's input
        raise InputError(
            f"visits must be a polars or pandas DataFrame, not {type(visits).__name__}",
            "Pass a frame in the visits schema (see the README)",
        ) from None
