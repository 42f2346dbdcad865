"""`leader predict`: a parquet file of visits → ranked drug recommendations (CSV or parquet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leadercli.cli.common import ConfigOpt, DebugOpt, QuietOpt, examples, load, run


def register(app: typer.Typer) -> None:
    app.command(
        "predict",
        epilog=examples(
            "leader predict data/mimic3/visits.parquet -o recs.csv",
            "leader predict visits.parquet -o recs.parquet --model runs/student --top-k 10",
            "leader predict visits.parquet -o recs.csv --threshold 0.3",
        ),
    )(predict)


def predict(
    input: Annotated[Path, typer.Argument(help="Visits parquet (the artifact's visits.parquet schema).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file: .csv or .parquet.")],
    model: Annotated[
        Path | None, typer.Option("--model", help="Run folder. Default: runs/distilled, else runs/student.")
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
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Rank drugs for the latest visit of every subject in INPUT and write one row per (subject, drug).

    Columns: subject_id, hadm_id, rank, atc3, drug_name, score, selected. The input is streamed in batches;
    the output is written atomically. Codes unknown to the model are counted and reported.
    """

    def body() -> None:
        from leadercli.predict import predict_file

        settings = load(config, predict={"model": model, "top_k": top_k, "threshold": threshold})
        predict_file(settings, input, output)

    run(body, quiet=quiet, debug=debug)
