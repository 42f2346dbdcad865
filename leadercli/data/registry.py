"""The source layouts by name: `--source` / `data.source` and an artifact's `source` → its layout object.

The one place that names every layout (`data/mimic.py`, `data/meds.py`). The commands resolve a name here
once, at the top (`leader preprocess`, `--for-run`, a run's source), and pass the layout object down; the
modules below never look a layout up by name. A new layout is added here and to the choices of
`settings.DataSettings.source` (a test checks that the two agree).
"""

from __future__ import annotations

from leadercli.data.layouts import SourceLayout
from leadercli.data.meds import MEDS
from leadercli.data.mimic import MIMIC3, MIMIC4
from leadercli.errors import SettingsError

LAYOUTS: dict[str, SourceLayout] = {"mimic3": MIMIC3, "mimic4": MIMIC4, "meds": MEDS}


def get_layout(name: str) -> SourceLayout:
    """The layout object of a source name (a `SettingsError` naming the known ones when there is none)."""
    if name not in LAYOUTS:
        raise SettingsError(
            f"source {name!r} is not a known layout", f"Use one of {', '.join(sorted(LAYOUTS))}"
        )
    return LAYOUTS[name]
