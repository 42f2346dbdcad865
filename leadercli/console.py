"""Console output: results go to stdout, logs and progress to stderr (rich). `--quiet` silences stderr chatter
but never the results or errors."""

from __future__ import annotations

import contextlib
import logging
import time
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
_state = {"quiet": False, "rank": 0, "world": 1}

log = logging.getLogger("leadercli")


def configure(quiet: bool = False, debug: bool = False) -> None:
    quiet = quiet or _state["rank"] > 0  # a data-parallel follower stays muted (`set_rank`)
    _state["quiet"] = quiet
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    log.handlers.clear()
    handler = RichHandler(console=err, show_path=debug, show_time=False, markup=False, rich_tracebacks=False)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def set_rank(rank: int, world: int) -> None:
    """Under a data-parallel launch (`training/distributed.py`) only rank 0 prints logs, progress and results;
    the other processes print only their errors, prefixed with `rank_prefix()`."""
    _state.update(rank=rank, world=world)
    if rank:
        configure(quiet=True)


def rank_prefix() -> str:
    """The error-line prefix: `rank 1/2: ` on a data-parallel follower, nothing otherwise."""
    return f"rank {_state['rank']}/{_state['world']}: " if _state["rank"] else ""


def quiet() -> bool:
    return _state["quiet"]


def info(msg: str) -> None:
    """A status line on stderr (suppressed by --quiet)."""
    if not _state["quiet"]:
        err.print(msg, highlight=False)


def result(msg: str) -> None:
    """A result line on stdout (kept by --quiet: results are never chatter; printed by rank 0 alone)."""
    if not _state["rank"]:
        out.print(msg, highlight=False)


def debug(msg: str) -> None:
    """A debug line on stderr, shown only with --debug."""
    log.debug(msg)


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
        # the ETA from the whole run, not the last 30 s: slow steps (a teacher batch on a CPU) still get one
        speed_estimate_period=24 * 3600,
    )


LINE_EVERY_S = 30.0  # a progress line at most this often when stderr is not a terminal


def _eta(done: float, total: float | None, elapsed: float) -> str:
    if not total or done <= 0:
        return ""
    left = elapsed / done * max(total - done, 0)
    return f", ETA {_clock(left)}"


def _clock(sec: float) -> str:
    sec = int(round(sec))
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@contextlib.contextmanager
def progress(description: str, total: float | None = None) -> Iterator[callable]:
    """`with progress("Training", total=n) as advance: advance(1, status="loss 0.3")`.

    On a terminal: a rich bar with elapsed time and an ETA from the average speed so far. When stderr is a
    file (a batch job): no bar (bars write blank lines into files) but a line with count, elapsed time and ETA
    at most every `LINE_EVERY_S` seconds, and a last line when the step took longer than that."""
    if _state["quiet"]:
        yield lambda n=1, **fields: None
        return
    if err.is_terminal:
        with make_progress() as prog:
            task = prog.add_task(description, total=total, status="")

            def advance(n: float = 1, **fields) -> None:
                prog.update(task, advance=n, **{k: v for k, v in fields.items()})

            yield advance
        return
    t0 = time.perf_counter()
    state = {"done": 0.0, "last": t0, "status": "", "lines": 0}

    def line(now: float) -> None:
        of = f"/{total:,.0f}" if total else ""
        status = f"  {state['status']}" if state["status"] else ""
        info(
            f"{description}: {state['done']:,.0f}{of}{status}  elapsed {_clock(now - t0)}{_eta(state['done'], total, now - t0)}"
        )
        state["last"], state["lines"] = now, state["lines"] + 1

    def advance_lines(n: float = 1, **fields) -> None:
        state["done"] += n
        if "status" in fields:
            state["status"] = str(fields["status"])
        now = time.perf_counter()
        if now - state["last"] >= LINE_EVERY_S:
            line(now)

    yield advance_lines
    now = time.perf_counter()
    if state["lines"] or now - t0 >= LINE_EVERY_S:
        line(now)


@contextlib.contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner for a step with no natural count (shown only when not quiet, and on a terminal); with
    --debug the step's wall time is logged."""
    t0 = time.perf_counter()
    if _state["quiet"] or not err.is_terminal:
        yield
    else:
        with err.status(description):
            yield
    log.debug("%s: %.2f s", description, time.perf_counter() - t0)
