"""The scoring pipeline of `leader predict` (issue 3, "Speed"): input frames → output tables in subject order.

A thread reads a record batch, carries its last subject over to the next one (`subject_chunks`) and encodes
the whole subjects straight from the frame to padded id tensors (`encode_chunk`, `Encoder.encode_frame`: the
same tensors as `samples_from_frame` → `Encoder.encode` → `collate`, patients batched by visit count so that
most batches pad to one visit); meanwhile as many threads as torch would use (`torch.get_num_threads()`) run
the model, one intra-op thread each, on the batches of the chunks before, and the main thread gets each
chunk's rows back in subject order (`ordered`). A teacher run scores each chunk's samples through its prompts
instead (slow on a CPU: a progress bar with ETA).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from leadercli import code_titles
from leadercli.data import contract
from leadercli.data.artifact import CodeList, Vocab
from leadercli.data.batching import Encoder
from leadercli.data.registry import LAYOUTS
from leadercli.data.samples import samples_from_frame
from leadercli.errors import InputError
from leadercli.explain import Explainer, pad_width
from leadercli.predict.input import PredictInput, check_frame, prefix_raw
from leadercli.predict.ranking import Counts, PredictOptions, Rows, out_schema
from leadercli.selection import ddi_matrix

T = TypeVar("T")


def predict_stream(scorer, src: PredictInput, opts: PredictOptions) -> Iterator[tuple[pa.Table, int, Counts]]:
    """The input's subjects → output tables in subject order, with the input rows each one consumed."""
    if opts.code_titles:  # a prediction input folder's codes.parquet names the codes of its visits
        scorer, _ = code_titles.with_titles(scorer, src.titles)
    encoder = scorer.encoder
    wanted = [
        c
        for c in src.columns
        if c in {*contract.REQUIRED, *contract.ORDER_COLUMNS, *contract.OPTIONAL, *encoder.profile_fields}
    ]
    chunk_rows = max(opts.batch_size * 2, 1024) if scorer.tensor_input else max(opts.batch_size, 64)
    chunks = subject_chunks(src.batches(wanted, chunk_rows))
    yield from score_chunks(scorer, chunks, src, opts)


def predict_frame(scorer, frame: pl.DataFrame, opts: PredictOptions, titles=None) -> pl.DataFrame:
    """One in-memory visits frame → the output table as a polars frame (the Python API's path; the same
    encoding and scoring as the file path)."""
    src = PredictInput(Path("<frame>"), "frame", frame.height, list(frame.columns), None, titles)
    check_frame(frame)
    order = (
        ["subject_id", "visit_no"] if "visit_no" in frame.columns else ["subject_id", "admittime", "hadm_id"]
    )
    frame = frame.sort(order, maintain_order=True)
    if titles and opts.code_titles and code_titles.reads_titles(scorer):  # only the frame's codes are read
        present = code_titles.present_codes(
            prefix_raw(frame, src.path, _default_icd_version(scorer.manifest))
        )
        scorer, _ = code_titles.with_titles(scorer, titles, present)
    tables = [t for t, _, _ in score_chunks(scorer, iter([(frame.height, frame)]), src, opts)]
    table = pa.concat_tables(tables) if tables else out_schema(opts.explain).empty_table()
    return pl.from_arrow(table)


def score_chunks(scorer, chunks, src: PredictInput, opts: PredictOptions):
    """(input rows, frame of whole subjects) → (output table, input rows, counts), chunk by chunk in order."""
    encoder = scorer.encoder
    threshold = opts.threshold if opts.threshold is not None else scorer.threshold
    top_k = min(opts.top_k, encoder.n_labels)
    labels = pa.array(encoder.vocab.medications.codes, pa.string())
    names = pa.array(encoder.vocab.medications.titles, pa.string())
    adj = ddi_matrix(scorer.ddi_pairs(), encoder.n_labels) if opts.max_ddi_pairs is not None else None
    default_version = _default_icd_version(scorer.manifest)
    seen = SeenSubjects()
    rows_fn = Rows(top_k, threshold, adj, opts.max_ddi_pairs, labels, names, opts.explain)
    explainer = Explainer(scorer, opts.explain, src.titles) if opts.explain else None

    def encoded() -> Iterator[tuple[int, pl.DataFrame, list[dict[str, torch.Tensor]]]]:
        for nrows, df in chunks:
            df, batches = encode_chunk(
                df, src.path, encoder, seen, default_version, scorer.max_visits, opts.batch_size
            )
            yield nrows, df, batches

    if not scorer.tensor_input:
        yield from _score_samples(scorer, encoded(), src, rows_fn, explainer)
        return

    def score(b: dict[str, torch.Tensor], df: pl.DataFrame):
        probs = scorer.score_batch(b)
        if explainer is None:
            return rows_fn(probs, b)
        return rows_fn(probs, b, lambda rp, rd: explainer.tensors(probs, b, df, rp, rd))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # three stages overlap: a thread reads and encodes the next chunk while `threads` threads run the model
        # on the batches of the current one (torch and polars release the GIL), one intra-op thread each
        # (many small ops: threads in parallel beat parallel ops); chunks are written in order
        with (
            in_background(encoded()) as stream,
            ThreadPoolExecutor(max(1, threads), initializer=torch.set_num_threads, initargs=(1,)) as pool,
        ):
            pending: deque = deque()  # chunks being scored: ([future], input rows)
            for nrows, df, batches in stream:
                pending.append(([pool.submit(score, b, df) for b in batches], nrows))
                while len(pending) > max(1, threads // 2):  # the next chunks keep the scorers busy meanwhile
                    futures, n = pending.popleft()
                    table, counts = ordered(rows_fn, [f.result() for f in futures])
                    yield table, n, counts
            while pending:
                futures, n = pending.popleft()
                table, counts = ordered(rows_fn, [f.result() for f in futures])
                yield table, n, counts
    finally:
        torch.set_num_threads(threads)


def _score_samples(scorer, encoded, src: PredictInput, rows_fn: Rows, explainer: Explainer | None = None):
    """A run that scores samples, not tensors (the teacher, through its prompts): chunk by chunk, in turn."""
    vocab = _titled_vocab(scorer.encoder.vocab, src.titles)
    for nrows, df, batches in encoded:
        if not batches:
            yield rows_fn.schema.empty_table(), nrows, Counts()
            continue
        samples = samples_from_frame(df, scorer.encoder.profile_fields, scorer.max_visits)
        probs = torch.from_numpy(scorer.score_samples(samples, vocab=vocab))  # (P, M)
        results = []
        for b in batches:
            p, chosen = probs[b["sample"]], [samples[i] for i in b["sample"].tolist()]
            how = None
            if explainer is not None:

                def how(rp, rd, p=p, chosen=chosen):
                    return explainer.samples(p, chosen, vocab, rp, rd)

            results.append(rows_fn(p, b, how))
        table, counts = ordered(rows_fn, results)
        yield table, nrows, counts


def _default_icd_version(manifest: dict) -> int | None:
    """The ICD version of raw (unprefixed) codes for a run's layout (MIMIC-III: 9; None = needs icd_version)."""
    layout = LAYOUTS.get((manifest.get("artifact") or {}).get("source"))
    return layout.default_icd_version if layout is not None else None


def _titled_vocab(vocab, titles: dict[str, dict[str, str]] | None):
    """The run's vocab, extended with the titles of codes it does not know (for the teacher's prompts)."""
    if not titles:
        return vocab
    lists = {}
    for kind in ("diagnoses", "procedures", "medications"):
        cl = getattr(vocab, kind)
        extra = [(c, t) for c, t in sorted(titles.get(kind, {}).items()) if c not in cl.index]
        lists[kind] = CodeList(cl.codes + [c for c, _ in extra], cl.titles + [t for _, t in extra])
    return Vocab(**lists, profile=vocab.profile)


def ordered(rows_fn: Rows, results: list[tuple[dict[str, np.ndarray], np.ndarray, Counts]]):
    """The batches of one chunk (in visit-count order) → (one table in sample (subject) order, each patient's
    rows together and by rank, the counts); the columns are put in order before the drug names are looked up."""
    counts = Counts()
    if not results:
        return rows_fn.schema.empty_table(), counts
    parts, samples, cs = zip(*results, strict=True)
    for c in cs:
        counts.add(c)
    order = np.argsort(np.concatenate(samples), kind="stable")  # rows of a patient keep their rank order
    cols = {name: _concat([p[name] for p in parts])[order] for name in parts[0]}
    return rows_fn.table(cols), counts


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """One column of several batches; 2-D explanation columns may differ in width (`explain.pad_width`)."""
    return np.concatenate(pad_width(parts) if parts[0].ndim == 2 else parts)


def subject_chunks(frames: Iterator[pl.DataFrame]) -> Iterator[tuple[int, pl.DataFrame]]:
    """Frames of rows → (rows read, frame of whole subjects): the last subject of a frame is carried over to
    the next one, as its visits may continue there."""
    carry: pl.DataFrame | None = None
    for df in frames:
        nrows = df.height
        if carry is not None:
            df = pl.concat([carry, df], how="vertical_relaxed")
        if df.height == 0:
            continue
        sid = df["subject_id"].to_numpy()
        last = sid[-1]
        start = len(sid) - int(np.argmax(sid[::-1] != last)) if (sid != last).any() else 0  # its last run
        if (sid[:start] == last).any():  # rows of it earlier in the frame too: all of them go on
            carry = df.filter(pl.col("subject_id") == last)
            yield nrows, df.filter(pl.col("subject_id") != last)
        else:  # the usual case: the last run is the subject's only one (slices, no copy)
            carry = df.slice(start)
            yield nrows, df.slice(0, start)
    if carry is not None and carry.height:
        yield 0, carry


class SeenSubjects:
    """The subjects of the chunks encoded so far, to refuse a subject whose rows are not contiguous; linear in
    the number of subjects whatever their order.

    Ids in [0, DENSE_LIMIT) (MIMIC's are below 2 × 10^7) are marks in a bool array indexed by id (1 byte per
    id up to the largest one, grown by doubling): one lookup and one store per subject. Other ids switch to
    sorted int64 runs kept as a binary counter (a log-structured merge: a chunk's subjects become a run, two
    runs of similar size are merged, at most log2(n) runs, 8 bytes a subject) — O(n log n). Before issue 12
    every chunk was looked up in every earlier chunk: quadratic when ids are not ascending."""

    DENSE_LIMIT = 1 << 26  # ids below this use the bool array (at most 64 MiB)

    def __init__(self) -> None:
        self.dense: np.ndarray | None = np.zeros(0, dtype=bool)  # None once an id is out of range
        self.runs: list[np.ndarray] = []  # sorted, sizes decreasing from first to last
        self.max: int | None = None

    def add(self, subjects: np.ndarray) -> bool:
        """Record a chunk's subjects; False when one was seen in an earlier chunk."""
        u = np.unique(np.asarray(subjects, dtype=np.int64))  # (n,) sorted
        if len(u) == 0:
            return True
        ascending = self.max is None or u[0] > self.max  # ascending ids need no lookup
        if self.dense is not None and (u[0] < 0 or u[-1] >= self.DENSE_LIMIT):
            self.runs = [np.flatnonzero(self.dense).astype(np.int64)] if self.max is not None else []
            self.dense = None
        if self.dense is not None:
            if u[-1] >= len(self.dense):
                grown = np.zeros(min(max(int(u[-1]) + 1, 2 * len(self.dense)), self.DENSE_LIMIT), dtype=bool)
                grown[: len(self.dense)] = self.dense
                self.dense = grown
            if not ascending and self.dense[u].any():
                return False
            self.dense[u] = True
        else:
            if not ascending:
                for run in self.runs:
                    i = np.searchsorted(run, u).clip(max=len(run) - 1)
                    if (run[i] == u).any():
                        return False
            while self.runs and len(self.runs[-1]) <= 2 * len(u):
                u = _merge_sorted(self.runs.pop(), u)
            self.runs.append(u)
        self.max = int(u[-1]) if self.max is None else max(self.max, int(u[-1]))
        return True


def _merge_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two sorted int64 arrays → one (numpy's stable sort for int64 is a timsort that merges the two runs in
    linear time)."""
    out = np.concatenate([a, b])
    out.sort(kind="stable")
    return out


def encode_chunk(
    df: pl.DataFrame,
    path: Path,
    encoder: Encoder,
    seen: SeenSubjects,
    default_version: int | None,
    max_visits: int,
    batch_size: int,
) -> tuple[pl.DataFrame, list[dict[str, torch.Tensor]]]:
    """Whole subjects → (the prefixed frame, its collated batches; `Encoder.encode_frame`). The contract's
    rules on rows: a subject's rows are contiguous, a visit is one row."""
    if df.height == 0:
        return df, []
    if not seen.add(df["subject_id"].to_numpy()):
        raise InputError(
            f"{path}: rows of a subject are not contiguous",
            "Sort the file by subject_id (and admittime) first",
        )
    dup = df.select(pl.struct(*contract.ID_COLUMNS).is_duplicated().sum()).item()
    if dup:
        raise InputError(
            f"{path}: {dup:,} rows repeat a (subject_id, hadm_id) pair (a visit must be one row)",
            "Merge the code lists of each visit into one row first",
        )
    if "medications" not in df.columns:
        df = df.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("medications"))
    df = prefix_raw(df, path, default_version)
    return df, encoder.encode_frame(df, max_visits, batch_size, labels=False, by_length=True)


@contextlib.contextmanager
def in_background(items: Iterator[T], depth: int = 1) -> Iterator[Iterator[T]]:
    """Runs the iterator `items` in a thread, at most `depth` items ahead of the consumer (memory stays
    bounded); its exceptions are raised in the consumer, in order. Leaving the block stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as exc:  # noqa: BLE001 — re-raised in the consumer
            put((False, exc))

    def consume() -> Iterator[T]:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item

    thread = threading.Thread(target=work, name="leader-predict-encode", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()
