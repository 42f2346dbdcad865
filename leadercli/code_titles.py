"""Code titles of a title-reading student run (issue 25; the model side is `models/code_text.py`, the sentence
encoder `models/title_encoder.py`).

- The run's table (`FILE`, safetensors): the title embedding of every unified id of its vocabulary (zero for
  PAD, the UNK ids and codes without a title), computed once when the run is trained (`build_table`), recorded in
  the manifest (`manifest["code_text"]`: mode, encoder name and hashes, the table's sha256) and checked when the
  run is loaded (`attach`).
- At prediction (`with_titles`): a code the run does not know but whose title the input gives (`codes.parquet` of
  `leader preprocess --for-run`, the Python API's `titles`) gets an id after the vocabulary's, its row the
  embedding of its title, computed once per call for all such codes together (in batches) and counted on stderr;
  rows are kept for later calls of the same loaded run. Only codes without any title stay UNK, so the
  unknown-code shrink (`leadercli.scorer`) counts only codes that are truly unknown.

Nothing here imports transformers until a title has to be embedded.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import threading
import time
import weakref
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from leadercli import console
from leadercli.errors import ArtifactError
from leadercli.kinds import rebuild_hint
from leadercli.models.code_text import CodeEmbedding

FILE = "code_text.safetensors"
KEY = "text"  # the tensor's name in FILE
KINDS = (("diagnoses", "diag_ids"), ("procedures", "proc_ids"), ("medications", "med_ids"))
_LOCK = threading.Lock()  # rows are added by one call at a time
_ROWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # CodeEmbedding → {(kind, code): id}


def table_digest(table: torch.Tensor) -> str:
    """sha256 of the table's float32 bytes, 16 hex digits."""
    return hashlib.sha256(table.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def vocab_titles(encoder) -> list[str]:
    """The title of every unified id of an `Encoder`'s vocabulary ("" for PAD, the UNK ids, untitled codes)."""
    out = [""] * encoder.vocab_size
    for kind, attr in KINDS:
        cl = getattr(encoder.vocab, kind)
        ids = getattr(encoder, attr)
        for code, title in zip(cl.codes, cl.titles, strict=True):
            out[ids[code]] = title or ""
    return out


def build_table(titles: list[str], title_encoder) -> torch.Tensor:
    """Titles of ids (V,) → the table (V, D): the encoder's embedding of each title, zero where there is none."""
    rows = [i for i, t in enumerate(titles) if t]
    D = int(title_encoder.record()["dim"])
    table = torch.zeros(len(titles), D)  # (V, D)
    if rows:
        table[rows] = title_encoder.embed([titles[i] for i in rows])
    return table


def write_table(path: Path, table: torch.Tensor, meta: dict[str, str]) -> None:
    save_file({KEY: table.detach().float().contiguous()}, str(path), metadata=meta)


def read_table(run_dir: Path, entry: dict, rows: int) -> torch.Tensor:
    """The run's table, checked against its manifest entry (`entry`) and its vocabulary size (`rows`)."""
    path = Path(run_dir) / FILE
    hint = rebuild_hint(Path(run_dir), "student")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (the run reads code titles: student.code_text)", hint)
    try:
        table = load_file(str(path))[KEY]
    except (SafetensorError, OSError, KeyError, ValueError):
        raise ArtifactError(f"{path} is not a readable table of code title embeddings", hint) from None
    if tuple(table.shape) != (rows, int(entry.get("dim", -1))) or table_digest(table) != entry.get("sha256"):
        raise ArtifactError(
            f"{path} is not the table of code title embeddings the run was trained with (shape or sha256 "
            "differs from manifest.json)",
            hint,
        )
    return table


def attach(model, run_dir: Path, manifest: dict) -> None:
    """Load the run's table into a title-reading student (`model.embed` a `CodeEmbedding`); others untouched."""
    entry = manifest.get("code_text")
    if isinstance(getattr(model, "embed", None), CodeEmbedding) and isinstance(entry, dict):
        model.embed.set_text(read_table(run_dir, entry, model.embed.vocab_size))


def reads_titles(scorer) -> bool:
    return isinstance(getattr(getattr(scorer, "module", None), "embed", None), CodeEmbedding)


@functools.lru_cache(maxsize=2)
def load_title_encoder(source: str | None):
    """A `models.title_encoder.TitleEncoder` (None: the bundled MiniLM), loaded once per process."""
    from leadercli.models.title_encoder import load_encoder  # transformers: only when titles are embedded

    return load_encoder(source)


def title_encoder_for(entry: dict):
    """The sentence encoder a run's table was made with (`entry`: its manifest's code_text), checked against
    the record."""
    rec = entry["encoder"]
    enc = load_title_encoder(rec.get("source"))
    enc.check(rec)
    return enc


def with_titles(scorer, titles: dict[str, dict[str, str]] | None, present: dict | None = None):
    """`scorer` reading the codes it does not know by their `titles` (kind → {code: title}; `present`: kind →
    codes, those of the input, when `titles` may hold more) → (a shallow copy of the scorer whose encoder maps
    them to extension ids, the number of codes so mapped). A run that does not read titles, or no titles: the
    scorer itself and 0. The copy shares the model and the unknown-code counter."""
    if not reads_titles(scorer) or not titles:
        return scorer, 0
    enc, embed = scorer.encoder, scorer.module.embed
    wanted: dict[tuple[str, str], str] = {}
    for kind, attr in KINDS:
        known, keep = getattr(enc, attr), (present or {}).get(kind)
        for code, title in (titles.get(kind) or {}).items():
            if title and code not in known and (keep is None or code in keep):
                wanted[(kind, code)] = title
    if not wanted:
        return scorer, 0
    with _LOCK:
        rows = _ROWS.setdefault(embed, {})
        new = [k for k in wanted if k not in rows]
        if new:
            t0 = time.perf_counter()
            te = title_encoder_for(scorer.manifest["code_text"])
            first = embed.extend(te.embed([wanted[k] for k in new]).to(embed.text.device))
            rows.update({k: first + i for i, k in enumerate(new)})
            console.info(
                f"code titles: embedded the titles of {len(new):,} codes unknown to the run "
                f"({te.record()['name']}, {time.perf_counter() - t0:.1f} s)"
            )
        ids = {k: rows[k] for k in wanted}
    out_enc = copy.copy(enc)
    for kind, attr in KINDS:
        add = {code: i for (k, code), i in ids.items() if k == kind}
        if add:
            setattr(out_enc, attr, {**getattr(enc, attr), **add})
    out_enc.n_ids = embed.num_ids
    out = copy.copy(scorer)
    out.encoder = out_enc
    console.info(
        f"code titles: {len(ids):,} codes unknown to the run are read by their titles (not UNK, not counted "
        "as unknown)"
    )
    return out, len(ids)


def present_codes(frame) -> dict[str, set[str]]:
    """kind → the codes of a visits frame (prefixed as the encoder reads them)."""
    return {
        kind: set(frame[kind].explode().drop_nulls().unique().to_list())
        for kind, _ in KINDS
        if kind in frame.columns
    }
