"""No network at run time (DESIGN §7): the switches that keep huggingface_hub, transformers and datasets
offline and silent. Set (unless the user set them) when the CLI starts and when the Python API loads a run,
before any of those libraries is imported: with them a hub-name `--base-model` that is not in the local cache
is an error instead of a download, and no telemetry request is sent."""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def set_offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
