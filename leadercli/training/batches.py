"""One epoch's training batches, built a few steps ahead in a background thread: the collated batch dict (the
padded format of `data/batching.py`, unchanged) and, for a model that prepares its batches (`Ahead`), its
extra inputs and dropout masks (torch's own, `models/torch_masks.py`). The training step on the main thread then only computes.

The batches and masks are exactly those the step would build itself: the thread follows the same order and
continues torch's generator from the epoch's start; `EpochBatches.finish()` hands the generator's state back to
torch when the epoch is done, before anything else draws from it (validation draws nothing).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch

from leadercli.data.batching import Encoded
from leadercli.models.torch_masks import TorchStream

Batch = dict[str, torch.Tensor]
# (batch, TorchStream) → the masks the model's dropout modules take in the step, in order; it may add keys to
# the batch, e.g. packed inputs and the masks a packed forward takes (`models/student_train.prepare`)
Ahead = Callable[[Batch, object], list[torch.Tensor]]
AHEAD = 4  # batches built ahead of the step


class EpochBatches:
    """Iterate (batch, masks) over `encoded` in `order`, `batch_size` at a time; with `ahead`, torch's
    generator continues in a `TorchStream` that `ahead` draws from (masks: what it returns), else masks is [].
    With `shard`, each batch holds this process's rows of the global batch ({} when it has none)."""

    def __init__(
        self,
        encoded: list[Encoded],
        batch_size: int,
        collate: Callable[[list[Encoded]], Batch],
        order: np.ndarray,
        ahead: Ahead | None = None,
        shard: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self._stream = TorchStream(torch.get_rng_state()) if ahead is not None else None
        self._args = (encoded, batch_size, collate, order, ahead)
        self._shard = shard  # data-parallel: this process's rows of each global batch (`distributed.shard`)
        self._queue: queue.Queue = queue.Queue(maxsize=AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="leader-batches", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        encoded, batch_size, collate, order, ahead = self._args
        try:
            for i in range(0, len(order), batch_size):
                rows = order[i : i + batch_size]
                rows = self._shard(rows) if self._shard is not None else rows
                batch = collate([encoded[j] for j in rows]) if len(rows) else {}  # {}: an empty share
                masks = ahead(batch, self._stream) if ahead is not None and batch else []
                while not self._stop.is_set():
                    try:
                        self._queue.put((batch, masks), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            self._queue.put(exc)

    def __iter__(self) -> Iterator[tuple[Batch, list[torch.Tensor]]]:
        try:
            while (item := self._queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()

    def finish(self) -> None:
        """After the last batch: torch's generator continues after the masks drawn for this epoch."""
        self._thread.join()
        if self._stream is not None:
            torch.set_rng_state(self._stream.torch_state())
