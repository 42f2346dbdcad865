"""Options shared by every command, and the wrapper that turns known errors into one line + exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from leadercli import console
from leadercli.errors import LeaderError
from leadercli.launcher import launch_env

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
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override any setting for this command, repeatable; `leader config` lists the keys. "
        "Example: --set student.epochs=5 --set hardware.threads=1",
    ),
]
SET_HINT = (
    "Settings without a flag of their own are set with --set section.key=value (e.g. --set student.epochs=5), "
    "in leader.toml or as LEADER_SECTION__KEY=value; `leader config` lists every key"
)


_METAVARS = {
    "<path>": "PATH",
    "<int>": "N",
    "<float>": "X",
    "<str>": "TEXT",
    "<list[str]>": "SECTION.KEY=VALUE",
}


class LeaderCommand(typer.core.TyperCommand):
    """A command whose unknown-option error points at --set, leader.toml and `leader config`, and whose help
    reads as sentences: paragraphs are unwrapped (docstrings are hard-wrapped at 110 columns), flags show no
    type tag and values show a plain metavar (PATH, N, TEXT) instead of `<bool>` / `<path>`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = "\n\n".join(" ".join(p.split()) for p in self.help.strip().split("\n\n"))

    def format_help(self, ctx, formatter) -> None:
        for param in self.get_params(ctx):
            if param.metavar is not None:
                continue
            if getattr(param, "param_type_name", "") == "argument":
                param.metavar = (param.name or "").upper()
                continue
            if getattr(param, "is_flag", False):
                param.metavar = ""
            else:
                shown = param.display_type(ctx) if hasattr(param, "display_type") else None
                text = str(shown)
                param.metavar = _METAVARS.get(text) or (
                    "N" if "int" in text else text.strip("<>").upper() or None
                )
        return super().format_help(ctx, formatter)

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:  # Typer vendors click: match the class by name, not by import
            if type(exc).__name__ == "NoSuchOption" and hasattr(exc, "message"):
                exc.message = f"{exc.message}. {SET_HINT}"
            raise


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
        launch = launch_env()  # under torchrun / accelerate launch only rank 0 prints, from the start
        if launch.world > 1:
            console.set_rank(launch.rank, launch.world)
        return fn()
    except LeaderError as exc:
        console.err.print(
            f"{console.rank_prefix()}[bold red]error:[/bold red] {exc.one_line()}",
            highlight=False,
            soft_wrap=True,
        )
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
            f"{console.rank_prefix()}[bold red]unexpected error:[/bold red] {type(exc).__name__}{where}"
            " (rerun with --debug for the message and traceback; please report it)",
            highlight=False,
        )
        raise typer.Exit(1) from None
    finally:
        if "leadercli.training.distributed" in sys.modules:  # a data-parallel command left its process group
            sys.modules["leadercli.training.distributed"].shutdown()


def parse_sets(sets: list[str] | None) -> dict[str, dict[str, Any]]:
    """`--set section.key=value` → {section: {key: value}}; values are read as TOML (numbers, booleans, lists,
    quoted strings), anything else is a string. A malformed item is a SettingsError naming it."""
    import tomllib

    from leadercli.errors import SettingsError

    out: dict[str, dict[str, Any]] = {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise SettingsError(
                f"--set {item!r} is not section.key=value",
                "Example: --set student.epochs=5 (see `leader config`)",
            )
        raw = raw.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def load(config: Path | None, sets: list[str] | None = None, **sections: dict[str, Any]):
    """Load settings with command-line overrides by section (None values are ignored): `--set` items first,
    then the command's own options, which win."""
    from leadercli.settings import load_settings

    merged = parse_sets(sets)
    for section, values in sections.items():
        merged.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return load_settings(config, overrides=merged)
