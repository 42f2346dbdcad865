"""Where the bundled sample data lives: `leadercli/sample_data/` inside an installed wheel (hatch force-include),
or the repository's `sample_data/` for an editable install / a source checkout. See `sample_data/README.md`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from leadercli.errors import InputError

DEMO_FOLDERS = {"mimic3": "mimic-iii-demo", "mimic4": "mimic-iv-demo"}
AUX_FOLDER = "aux"


def _candidates() -> list[Path]:
    found: list[Path] = []
    try:
        found.append(Path(str(resources.files("leadercli") / "sample_data")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - leadercli is always importable here
        pass
    found.append(Path(__file__).resolve().parents[2] / "sample_data")
    return found


def sample_data_dir() -> Path:
    """The bundled sample_data folder (the first candidate that holds the aux files and both demos)."""
    for root in _candidates():
        if (root / AUX_FOLDER).is_dir() and all((root / d).is_dir() for d in DEMO_FOLDERS.values()):
            return root
    raise InputError(
        "the bundled sample data is not installed",
        "Reinstall leadercli, or pass --raw and --aux folders explicitly",
    )


def bundled_raw(source: str) -> Path:
    """Raw demo tables of `source` (mimic3: MIMIC-III demo 1.4; mimic4: MIMIC-IV demo 2.2, root holding hosp/)."""
    return sample_data_dir() / DEMO_FOLDERS[source]


def bundled_aux() -> Path:
    return sample_data_dir() / AUX_FOLDER
