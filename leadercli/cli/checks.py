"""Checks the commands run on their arguments before any heavy import (torch, transformers, polars) or data
load, so that a wrong path or option fails in a fraction of a second with a hint naming the real command or
flag. The full checks (schemas, manifests, hashes) still run later, where the data is read."""

from __future__ import annotations

import json
from pathlib import Path

from leadercli.data import contract
from leadercli.errors import SettingsError
from leadercli.kinds import KINDS

RUN_KINDS = KINDS  # the run kinds: leadercli.kinds


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or (value.count("/") != 1 and "/" in value)


def base_model(value: str | None) -> None:
    """`--base-model` / `teacher.base_model`: a local folder must exist (hub names are resolved offline later)."""
    if not value:
        return
    path = Path(value).expanduser()
    if _looks_like_path(value) and not path.is_dir():
        raise SettingsError(
            f"teacher.base_model {value} is not a folder",
            "Pass a local Hugging Face model folder with --base-model, or leave it unset for the bundled MiniLM",
        )


def run_folder(
    path: Path | None, option: str, want: tuple[str, ...] = RUN_KINDS, make: str | None = None
) -> None:
    """A run folder given as `option` must hold a finished leadercli run of one of the `want` kinds."""
    if path is None:
        return
    manifest = Path(path) / "manifest.json"
    make = make or "`leader train student`, `leader distill` or `leader train teacher`"
    if not manifest.is_file():
        raise SettingsError(
            f"{option} {path} is not a finished run folder (no manifest.json)", f"Train it with {make}"
        )
    try:
        kind = json.loads(manifest.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return  # a damaged manifest: the run loader names the file and the command that rebuilds it
    if kind not in want:
        raise SettingsError(
            f"{option} {path} is not a {' or '.join(want)} run (kind {kind!r})", f"Pass a run made by {make}"
        )


def predict_args(input_path: Path, output: Path) -> None:
    if output.suffix.lower() not in contract.OUTPUT_SUFFIXES:
        raise SettingsError(f"output {output} must end in .csv or .parquet", "Choose e.g. -o recs.csv")
    if not input_path.exists():
        raise SettingsError(
            f"input {input_path} does not exist",
            "Pass a visits .parquet/.csv file or a folder written by `leader preprocess --for-run`",
        )
