"""Output locations, checked before any work is done: can the folder be written, is there room, and would
writing there destroy something that `leader` did not write (an artifact, an input, another tool's files)?

Every command that writes (`train student|teacher`, `distill` → `--out`, `predict -o`, `report -o`) calls
these first, so that a read-only folder, a full disk or a file where a folder should be is one line and exit
code 2 before minutes of work, not an unexpected error after them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from leadercli.errors import SettingsError

MIN_FREE = 64 << 20  # bytes every output location needs at least (a run folder, a report, a small file)


def existing_ancestor(path: Path) -> Path:
    """The nearest folder or file on the way up from `path` that exists (`path` itself when it exists)."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable_dir(
    folder: Path, what: str = "output folder", hint: str = "Choose another output"
) -> None:
    """`folder` exists as a writable folder, or can be created (its nearest existing ancestor is a writable
    folder). The test writes and removes a hidden probe file, so read-only mounts are caught too."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SettingsError(f"{what} {folder} is a file, not a folder", hint)
    probe = existing_ancestor(folder)
    if not probe.is_dir():
        raise SettingsError(f"{what} {folder} cannot be created ({probe} is a file)", hint)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SettingsError(f"{what} {folder} is not writable ({probe} is read-only)", hint)
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".leader-write-probe-")
    except OSError as exc:
        raise SettingsError(
            f"{what} {folder} is not writable ({probe}: {exc.strerror or type(exc).__name__})", hint
        ) from None
    os.close(fd)
    os.unlink(name)


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(existing_ancestor(Path(folder))).free


def check_free_space(
    folder: Path,
    need: int,
    what: str = "output folder",
    hint: str = "Free some space or choose another output",
) -> None:
    """At least `need` bytes (an estimate of the output, never less than `MIN_FREE`) are free where `folder`
    is or will be."""
    need = max(int(need), MIN_FREE)
    free = free_bytes(folder)
    if free < need:
        raise SettingsError(
            f"{what} {folder} has {_size(free)} free, the output needs about {_size(need)}", hint
        )


def refuse_dangerous_out(out: Path, protected: dict[str, Path | None], option: str = "--out") -> None:
    """`out` must not be, nor contain, any of the `protected` folders or files (label → path): writing a run
    or report there would replace or delete them."""
    target = Path(os.path.abspath(out)).resolve()
    for label, path in protected.items():
        if path is None:
            continue
        p = Path(os.path.abspath(path)).resolve()
        if target == p:
            raise SettingsError(
                f"{option} {out} is the {label} ({path})",
                f"Choose another {option}; inputs are never replaced",
            )
        if target in p.parents:
            raise SettingsError(
                f"{option} {out} contains the {label} ({path})",
                f"Choose another {option}; inputs are never replaced",
            )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


@contextlib.contextmanager
def replaced_folder(target: Path, recheck: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Write a folder atomically: yields a temporary sibling folder; when the block ends without an error,
    `recheck(target)` runs (the target may have changed meanwhile), the old `target` is moved aside, the new
    folder renamed into place (the old one restored if that fails) and the old one removed. On an error the
    temporary folder is removed and `target` stays as it was. Temporary folders left by a killed run
    (`.NAME.tmp-*`) are removed first. Used by `preprocess`, `preprocess --for-run` and `export`."""
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    old: Path | None = None
    try:
        yield tmp
        if recheck is not None:
            recheck(target)
        if target.exists():
            old = parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            target.rename(old)
        try:
            tmp.rename(target)
        except OSError:
            if old is not None:
                old.rename(target)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
