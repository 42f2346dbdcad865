"""`leader export`: a shareable copy of a run folder (weights, model card, no patient-level data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leadercli.cli.common import ConfigOpt, DebugOpt, LeaderCommand, QuietOpt, examples, run


def register(app: typer.Typer) -> None:
    app.command(
        "export",
        cls=LeaderCommand,
        epilog=examples(
            "leader export runs/distilled --out share/distilled",
            "leader export runs/teacher --out share/teacher",
        ),
    )(export)


def export(
    run_dir: Annotated[Path, typer.Argument(help="Run folder to export (any kind). Example: runs/distilled")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write the copy to. Example: --out share/distilled")
    ],
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a shareable copy of a run: weights, vocab, DDI pairs, a README.md model card, no patient-level data.

    Leaves out features/ (per-patient teacher states keyed by subject id) and checkpoint/, and every local path
    (the manifest's artifact path, the [paths] settings, the PEFT adapter's base model path). The copy loads with
    `leader predict --model DIR` and `Recommender.load(DIR)`.
    """

    def body() -> None:
        from leadercli import console
        from leadercli.card import export_run

        target = export_run(run_dir, out)
        files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
        console.out.print(
            f"exported {run_dir} to {target} ({len(files)} files: {', '.join(files)})", highlight=False
        )

    run(body, quiet=quiet, debug=debug)
