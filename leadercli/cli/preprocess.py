"""`leader preprocess`: raw MIMIC tables → artifact folder (manifest, visits, patients, vocab, ddi)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from leadercli.cli.common import ConfigOpt, DebugOpt, QuietOpt, examples, load, run


def register(app: typer.Typer) -> None:
    app.command(
        "preprocess",
        epilog=examples(
            "leader preprocess",
            "leader preprocess --source mimic4",
            "leader preprocess --source mimic3 --raw /data/mimic-iii-1.4 --out data/mimic3-full",
            "leader preprocess --source mimic4 --raw /data/mimic-iv-2.2/hosp --aux sample_data/aux",
        ),
    )(preprocess)


def preprocess(
    source: Annotated[
        str | None,
        typer.Option("--source", help="Raw layout: mimic3 or mimic4. Default from settings (mimic3)."),
    ] = None,
    raw: Annotated[
        Path | None,
        typer.Option(
            "--raw",
            help="Folder with the raw tables (.csv or .csv.gz). Default: the bundled demo of --source.",
        ),
    ] = None,
    aux: Annotated[
        Path | None, typer.Option("--aux", help="Folder with the mapping files. Default: the bundled copies.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Artifact folder to write. Default: data/<source>.")
    ] = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Build a reproducible cohort artifact from raw MIMIC-III / MIMIC-IV tables.

    Maps NDC → ATC level 3, keeps admissions with a diagnosis, a procedure and a mapped drug, orders visits by
    admission time, splits patients 80/10/10, fits vocabularies on the training patients and writes
    manifest.json, visits.parquet, patients.parquet, vocab.json and ddi.parquet atomically.
    """

    def body() -> None:
        from leadercli.data.preprocess import preprocess as do_preprocess
        from leadercli.data.preprocess import print_summary

        settings = load(
            config, data={"source": _source(source)}, paths={"raw": raw, "aux": aux, "artifact": out}
        )
        result = do_preprocess(settings)
        print_summary(result)

    run(body, quiet=quiet, debug=debug)


def _source(value: str | None) -> Literal["mimic3", "mimic4"] | None:
    if value is None:
        return None
    from leadercli.errors import SettingsError

    v = value.lower().replace("-", "")
    if v not in ("mimic3", "mimic4", "mimiciii", "mimiciv"):
        raise_in = SettingsError(f"--source {value!r} is not known", "Use --source mimic3 or --source mimic4")
        from leadercli import console

        console.err.print(f"[bold red]error:[/bold red] {raise_in.one_line()}", highlight=False)
        raise typer.Exit(2)
    return "mimic4" if v in ("mimic4", "mimiciv") else "mimic3"
