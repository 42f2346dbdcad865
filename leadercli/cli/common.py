"""Options shared by every command, and the wrapper that turns known errors into one line + exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from leadercli import console
from leadercli.errors import LeaderError

T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Settings file (TOML). Default: ./leader.toml when present. Example: --config leader.toml",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only results and errors; no progress or logs.")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", help="Artifact folder written by `leader preprocess`. Example: --data data/mimic3"
    ),
]


def examples(*lines: str) -> str:
    """Help epilog listing examples (Typer keeps line breaks with \\b in rich mode off)."""
    body = "\n\n".join(f"  $ {line}" for line in lines)
    return f"[bold]Examples[/bold]\n\n{body}"


def run(fn: Callable[[], T], *, quiet: bool = False, debug: bool = False) -> T:
    """Run a command body: known errors → one red line on stderr, exit 2; unexpected → exit 1."""
    console.configure(quiet=quiet, debug=debug)
    try:
        return fn()
    except LeaderError as exc:
        console.err.print(f"[bold red]error:[/bold red] {exc.one_line()}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.err.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the CLI boundary
        if debug:
            raise
        # the message of an unexpected error may quote data values, so only its type and place are shown
        tb = exc.__traceback__
        where = ""
        while tb is not None:
            if "leadercli" in tb.tb_frame.f_code.co_filename:
                where = f" in {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
            tb = tb.tb_next
        console.err.print(
            f"[bold red]unexpected error:[/bold red] {type(exc).__name__}{where}"
            " (rerun with --debug for the message and traceback; please report it)",
            highlight=False,
        )
        raise typer.Exit(1) from None


def load(config: Path | None, **sections: dict[str, Any]):
    """Load settings with command-line overrides by section (None values are ignored)."""
    from leadercli.settings import load_settings

    return load_settings(config, overrides=sections)
