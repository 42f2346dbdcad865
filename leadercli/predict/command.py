"""`leader predict INPUT -o OUTPUT`: the whole command — input and output checks, the run, the streamed
scoring (`streaming.predict_stream`), the atomic write with its sidecar (`output`), and the summary lines."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from leadercli import console
from leadercli.errors import InputError, SettingsError
from leadercli.explain import BATCH as EXPLAIN_BATCH
from leadercli.hardware import apply_threads
from leadercli.predict import output as out
from leadercli.predict.input import PredictInput, read_input
from leadercli.predict.ranking import Counts, PredictOptions
from leadercli.predict.streaming import predict_stream
from leadercli.runs import load_run, write_json


@dataclass
class PredictSummary:
    patients: int
    rows: int
    unknown: dict
    output: Path
    threshold: float
    model: Path
    counts: Counts = field(default_factory=Counts)
    meta: dict = field(default_factory=dict)


def default_model(settings) -> Path:
    """The run `leader predict` uses without --model: distilled, else student, else teacher."""
    for p in (settings.paths.distilled, settings.paths.student, settings.paths.teacher):
        if (Path(p) / "manifest.json").is_file():
            return Path(p)
    raise SettingsError(
        f"no trained model found (looked in {settings.paths.distilled}, {settings.paths.student} and "
        f"{settings.paths.teacher})",
        "Train one with `leader train student` or `leader distill`, or pass --model RUN_DIR",
    )


def predict_file(
    settings, input_path: Path, output: Path, max_ddi_pairs: int | None = None, explain: int = 0
) -> PredictSummary:
    """`leader predict INPUT -o OUTPUT`: the whole command, output written atomically with its sidecar;
    `explain` > 0 adds the codes that most raised each drug's score (`leadercli.explain`)."""
    cfg = settings.predict
    input_path, output = Path(input_path), Path(output)
    out.check_output(output, input_path, cfg.top_k)
    src = read_input(input_path)
    out.clean_stale(output)
    model_dir = Path(cfg.model) if cfg.model else _input_run(src) or default_model(settings)
    apply_threads(settings.hardware, pool=True)  # the scoring pool has one worker per torch thread
    stop = threading.Event()
    hasher = ThreadPoolExecutor(1)
    digest = hasher.submit(out.sha256, src.path, stop)
    try:
        scorer = load_run(model_dir, unknown_shrink=cfg.unknown_shrink)
        # the modules and the model stay for the whole command: the collector skips them until it ends (it
        # walked torch's objects on every full collection, about 4 % of predict's CPU time)
        gc.freeze()
        batch = min(cfg.batch_size, EXPLAIN_BATCH) if explain else cfg.batch_size  # bounded copies, progress
        opts = PredictOptions(cfg.top_k, cfg.threshold, max_ddi_pairs, batch, explain, cfg.code_titles)
        _check_input_run(src, scorer)
        counts, meta = _write(scorer, src, opts, output, digest)
    finally:
        gc.unfreeze()  # a caller that goes on (the Python API, tests) gets its collector back as it was
        stop.set()
        hasher.shutdown(wait=True)
    unk = scorer.encoder.unknown
    _report(counts, unk, opts, scorer)
    threshold = opts.threshold if opts.threshold is not None else scorer.threshold
    console.out.print(
        f"wrote {counts.rows:,} rows for {counts.patients:,} patients to {output} "
        f"(model {model_dir}, {scorer.kind}, threshold {threshold:.2f})",
        highlight=False,
    )
    return PredictSummary(
        counts.patients,
        counts.rows,
        {"codes": dict(unk.codes), "profile": unk.profile},
        output,
        threshold,
        model_dir,
        counts,
        meta,
    )


def _write(
    scorer, src: PredictInput, opts: PredictOptions, output: Path, digest: Future
) -> tuple[Counts, dict]:
    """Score the input into a temporary file, then rename it into place and write the sidecar; on any error
    the temporary file is removed and nothing is left."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.temporary(output)
    writer = None
    try:
        with out.writing(output):
            suffix = output.suffix.lower()
            writer = (
                out.open_writer(tmp, suffix, opts.explain) if opts.explain else out.open_writer(tmp, suffix)
            )
        counts = Counts()
        with console.progress("predicting", total=src.num_rows) as advance:
            for table, nrows, c in predict_stream(scorer, src, opts):
                with out.writing(output):
                    writer.write_table(table)
                counts.add(c)
                advance(nrows, status=f"{counts.patients:,} patients")
        with out.writing(output):
            writer.close()
        writer = None
        if counts.patients == 0:
            raise InputError(f"{src.path} has no visits", "Pass a file with at least one visit")
        meta = out.sidecar(scorer, src, opts, counts, digest.result(), output)
        with out.writing(output):
            os.replace(tmp, output)
            write_json(Path(f"{output}.meta.json"), meta)
    finally:
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()
        if tmp.exists():
            tmp.unlink()
    return counts, meta


def _input_run(src: PredictInput) -> Path | None:
    """The run a `preprocess --for-run` folder was built for, when it still exists (the default --model)."""
    path = ((src.manifest or {}).get("run") or {}).get("path")
    return Path(path) if path and (Path(path) / "manifest.json").is_file() else None


def _check_input_run(src: PredictInput, scorer) -> None:
    if src.manifest is None:
        return
    want = (src.manifest.get("run") or {}).get("labels_hash")
    if want is not None and want != scorer.manifest.get("labels_hash"):
        console.info(
            f"note: {src.path.parent} was built for run {src.manifest['run'].get('path')}, not for "
            f"{scorer.path}: codes are counted against {scorer.path}'s vocabulary"
        )


def _report(counts: Counts, unk, opts: PredictOptions, scorer) -> None:
    console.info(
        f"unknown codes: {unk.codes['diagnoses']:,} diagnoses, {unk.codes['procedures']:,} procedures, "
        f"{unk.codes['medications']:,} history drugs, {unk.profile:,} profile values (mapped to UNK)"
    )
    if counts.mostly_unknown:
        console.info(
            f"warning: {counts.mostly_unknown:,} of {counts.patients:,} patients have a target visit whose codes "
            f"are mostly unknown to the {scorer.kind} run ({counts.no_known_code:,} with no known code): "
            f"{scorer.unknown_note()}; check `n_unknown_codes`"
        )
    if counts.patients and counts.no_known_code == counts.patients:
        console.info(
            "warning: not one target visit has a code the run knows: the input is probably malformed (another "
            "code system or ICD version, codes without their D9:/D10: prefix and no icd_version, a wrong list "
            "separator) rather than new patients with new codes"
        )
    if counts.beyond_top_k:
        console.info(
            f"{counts.beyond_top_k:,} selected drugs ranked below --top-k {opts.top_k} were written too "
            "(every selected drug is in the output)"
        )
    if opts.max_ddi_pairs is not None:
        console.info(
            f"--max-ddi-pairs {opts.max_ddi_pairs}: {counts.ddi_dropped:,} selected drugs dropped "
            f"(column ddi_dropped), {len(scorer.ddi_pairs())} interacting pairs known to the run"
        )
