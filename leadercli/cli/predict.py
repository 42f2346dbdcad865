"""`leader predict`: visits (parquet, CSV or a `preprocess --for-run` folder) → ranked drugs (CSV or parquet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leadercli.cli.common import ConfigOpt, DebugOpt, LeaderCommand, QuietOpt, SetOpt, examples, load, run


def register(app: typer.Typer) -> None:
    app.command(
        cls=LeaderCommand,
        name="predict",
        epilog=examples(
            "leader predict data/mimic3/visits.parquet -o recs.csv",
            "leader predict visits.parquet -o recs.parquet --model runs/student --top-k 10",
            "leader predict visits.parquet -o recs.csv --threshold 0.3",
            "leader predict data/new-patients -o recs.csv --model runs/distilled --max-ddi-pairs 0",
            "leader predict visits.csv -o recs.parquet --model runs/teacher",
            "leader predict visits.parquet -o recs.parquet --model runs/student --explain 3",
        ),
    )(predict)


def predict(
    input: Annotated[
        Path,
        typer.Argument(
            help="Visits in the artifact's visits.parquet schema: a .parquet or .csv file (list columns as "
            "`;`-separated codes), or a folder written by `leader preprocess --for-run`."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file: .csv or .parquet.")],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Run folder of any kind (distilled, student, teacher, popularity, previous). "
            "Default: runs/distilled, else runs/student, else runs/teacher.",
        ),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Drugs per patient in the output (default 20).")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="Score at or above which a drug is `selected`. Default: the model's."
        ),
    ] = None,
    max_ddi_pairs: Annotated[
        int | None,
        typer.Option(
            "--max-ddi-pairs",
            min=0,
            help="Drop the lowest-scored selected drugs of interacting pairs (the run's DDI pairs) until at "
            "most N interacting pairs remain per patient; dropped drugs are marked in `ddi_dropped`.",
        ),
    ] = None,
    explain: Annotated[
        int,
        typer.Option(
            "--explain",
            min=0,
            help="Add, per row, the K codes of the target visit and of the history that most raised the drug's "
            "score (occlusion: the score drop when the code is removed), with their kind, title and "
            "contribution: columns explain_codes, explain_kinds, explain_titles, explain_visits, "
            "explain_contributions (lists in parquet, `;`-joined in CSV). Cost: one extra scoring of each "
            "code's set per code of the record (about 20 for a MIMIC-IV admission): for the student about 11x "
            "the CPU time of plain predict and no more memory (100k patients on 2 cores: 240 vs 21 CPU-s; "
            "benchmarks/bench_explain.py); a teacher scores one prompt per code (slow on a CPU). 0 = none.",
        ),
    ] = 0,
    sets: SetOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Rank drugs for the latest visit of every subject in INPUT and write one row per (subject, drug).

    Columns: subject_id, hadm_id, rank, atc3, drug_name, score, selected, ddi_dropped, n_unknown_codes (and the
    explain_* columns with --explain). Every
    selected drug is written, also beyond --top-k. The input is streamed in batches; the output is written
    atomically, with a sidecar OUTPUT.meta.json (model, label hash, threshold, version, input sha256, counts).
    """

    def body() -> None:
        from leadercli.cli import checks

        checks.predict_args(input, output)  # before the heavy imports: a wrong path fails at once
        settings = load(config, sets, predict={"model": model, "top_k": top_k, "threshold": threshold})
        checks.run_folder(settings.predict.model, "--model")
        from leadercli.hardware import keep_freed_memory
        from leadercli.predict import predict_file

        keep_freed_memory()  # this process ends with the command: its allocator may keep what it frees
        predict_file(settings, input, output, max_ddi_pairs=max_ddi_pairs, explain=explain)

    run(body, quiet=quiet, debug=debug)
