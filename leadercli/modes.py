"""File modes that respect the user's umask (issue 13: runs and reports readable by the group).

`tempfile.mkstemp` / `mkdtemp` create 0600 / 0700 whatever the umask, so a file or folder written through them
and renamed into place is given the mode an ordinary `open` / `mkdir` would have had: 0666 / 0777 less the umask
(0644 / 0755 under the usual umask 022)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()


def umask() -> int:
    with _lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def fix_file(fd_or_path: int | str | Path) -> None:
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, file_mode())
    else:
        os.chmod(fd_or_path, file_mode())


def fix_dir(path: str | Path) -> None:
    os.chmod(path, dir_mode())


def fix_tree(root: str | Path) -> None:
    """Every file and folder under `root` (included) gets the umask's mode: for writers that do not follow the
    umask (safetensors writes 0600, tempfile makes 0600/0700)."""
    root = Path(root)
    fm, dm = file_mode(), dir_mode()
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, dm if p.is_dir() else fm)
