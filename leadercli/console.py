"""Console output: results go to stdout, logs and progress to stderr (rich). `--quiet` silences stderr chatter
but never the results or errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

out = Console(soft_wrap=True)  # results
err = Console(stderr=True, soft_wrap=True)  # logs, progress, errors
_state = {"quiet": False}

log = logging.getLogger("leadercli")


def configure(quiet: bool = False, debug: bool = False) -> None:
    _state["quiet"] = quiet
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    log.handlers.clear()
    handler = RichHandler(console=err, show_path=debug, show_time=False, markup=False, rich_tracebacks=False)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def quiet() -> bool:
    return _state["quiet"]


def info(msg: str) -> None:
    """A status line on stderr (suppressed by --quiet)."""
    if not _state["quiet"]:
        err.print(msg, highlight=False)


def make_progress(transient: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=_state["quiet"],
    )


@contextlib.contextmanager
def progress(description: str, total: float | None = None) -> Iterator[callable]:
    """`with progress("Training", total=n) as advance: advance(1, status="loss 0.3")`."""
    with make_progress() as prog:
        task = prog.add_task(description, total=total, status="")

        def advance(n: float = 1, **fields) -> None:
            prog.update(task, advance=n, **{k: v for k, v in fields.items()})

        yield advance


@contextlib.contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner for a step with no natural count (shown only when not quiet)."""
    if _state["quiet"]:
        yield
        return
    with err.status(description):
        yield
