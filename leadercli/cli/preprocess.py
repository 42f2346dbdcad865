"""`leader preprocess`: raw MIMIC tables → artifact folder (manifest, visits, patients, vocab, ddi)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from leadercli.cli.common import ConfigOpt, DebugOpt, LeaderCommand, QuietOpt, SetOpt, examples, load, run


def register(app: typer.Typer) -> None:
    app.command(
        cls=LeaderCommand,
        name="preprocess",
        epilog=examples(
            "leader preprocess",
            "leader preprocess --source mimic4",
            "leader preprocess --source mimic3 --raw /data/mimic-iii-1.4 --out data/mimic3-full",
            "leader preprocess --source mimic4 --raw /data/mimic-iv-2.2/hosp --aux sample_data/aux",
            "leader preprocess --for-run runs/distilled --raw /data/new-admissions --out data/new-patients",
            "leader preprocess --source meds --raw /data/mimic-iv-meds --out data/meds",
        ),
    )(preprocess)


def preprocess(
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Raw layout: mimic3, mimic4 (CSV tables) or meds (a MEDS root: data/*.parquet + metadata/). "
            "Default from settings (mimic3); with --for-run, the run's.",
        ),
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
        Path | None,
        typer.Option(
            "--out",
            help="Folder to write. Default: data/<source> (an artifact), with --for-run data/new-patients.",
        ),
    ] = None,
    for_run: Annotated[
        Path | None,
        typer.Option(
            "--for-run",
            help="New patients: write a prediction input for this run instead of an artifact — every admission "
            "with a diagnosis or procedure, no split, the run's vocabulary (needs --raw). "
            "Example: --for-run runs/distilled",
        ),
    ] = None,
    sets: SetOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Build a reproducible cohort artifact from raw MIMIC-III / MIMIC-IV tables.

    Maps NDC → ATC level 3, keeps admissions with a diagnosis, a procedure and a mapped drug, orders visits by
    admission time, splits patients 80/10/10, fits vocabularies on the training patients and writes
    manifest.json, visits.parquet, patients.parquet, vocab.json and ddi.parquet atomically.

    With --for-run RUN it prepares new patients for `leader predict` instead: visits.parquet, codes.parquet
    and manifest.json, the latest admission of each patient being the one to prescribe for.
    """

    def body() -> None:
        if for_run is not None:
            from leadercli.errors import SettingsError
            from leadercli.newcohort import build_for_run
            from leadercli.newcohort import print_summary as summary

            if raw is None:
                raise SettingsError(
                    "--for-run needs --raw: the folder with the new patients' tables",
                    "Example: leader preprocess --for-run runs/distilled --raw /data/new-admissions",
                )
            settings = load(config, sets, data={"source": _source(source)}, paths={"aux": aux})
            result = build_for_run(settings, for_run, raw, out or Path("data/new-patients"), _source(source))
            summary(result)
            return

        from leadercli.data.preprocess import preprocess as do_preprocess
        from leadercli.data.preprocess import print_summary

        settings = load(
            config, sets, data={"source": _source(source)}, paths={"raw": raw, "aux": aux, "artifact": out}
        )
        result = do_preprocess(settings)
        print_summary(result)

    run(body, quiet=quiet, debug=debug)


def _source(value: str | None) -> Literal["mimic3", "mimic4", "meds"] | None:
    if value is None:
        return None
    from leadercli.errors import SettingsError

    v = value.lower().replace("-", "").replace("_", "")
    names = {
        "mimic3": "mimic3",
        "mimiciii": "mimic3",
        "mimic4": "mimic4",
        "mimiciv": "mimic4",
        "meds": "meds",
    }
    if v not in names:
        raise_in = SettingsError(
            f"--source {value!r} is not known", "Use --source mimic3, --source mimic4 or --source meds"
        )
        from leadercli import console

        console.err.print(f"[bold red]error:[/bold red] {raise_in.one_line()}", highlight=False)
        raise typer.Exit(2)
    return names[v]  # type: ignore[return-value]
