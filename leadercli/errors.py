"""The error hierarchy. Every known failure is a `LeaderError`: one line saying what is wrong (naming the file,
column, key or value) and a hint saying what to do. The CLI prints it as one line on stderr and exits with
`exit_code` (2 for bad input or settings); anything else is unexpected and exits 1.

Messages must never contain patient data beyond counts and ids.
"""

from __future__ import annotations


class LeaderError(Exception):
    """A known, user-facing failure."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f". {self.hint.rstrip('.')}."
        else:
            text += "."
        return " ".join(text.split())  # strictly one line


class SettingsError(LeaderError):
    """Bad settings: unknown key, wrong type, out-of-range value, unreadable leader.toml."""


class InputError(LeaderError):
    """Bad input data: missing file or column, wrong type, empty table, corrupt gzip, unknown code."""


class ArtifactError(LeaderError):
    """A data artifact or run folder that is missing, incomplete, or does not match another one."""


class ModelError(LeaderError):
    """A model backbone or checkpoint that cannot be loaded or does not fit."""
