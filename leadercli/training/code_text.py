"""The title table of a title-reading student (issue 25, `student.code_text`; `leadercli.code_titles` holds the
file and its checks): the sentence embedding of every vocabulary code's title, computed once per run before the
student is built, written to the run folder and described for the manifest. A table already in the run folder
(`--resume`, or the same run folder trained again) is reused when its vocabulary and encoder are this run's.
Shared by `leader train student` and `leader distill`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from leadercli import code_titles, console, runs
from leadercli.errors import SettingsError
from leadercli.training import distributed


def encoder_source(setting: str, teacher_dir: Path) -> str | None:
    """`student.code_text_encoder` → what `TitleEncoder` loads: None for the bundled MiniLM, the teacher run's
    base model for "teacher" (None when that is the default, MiniLM), else the setting (a folder or hub id)."""
    if setting == "minilm":
        return None
    if setting == "teacher":
        if not (Path(teacher_dir) / runs.MANIFEST).is_file():
            raise SettingsError(
                f"student.code_text_encoder = teacher needs a teacher run at paths.teacher ({teacher_dir})",
                "Train one first (`leader train teacher`), pass --teacher, or use minilm",
            )
        base = runs.read_manifest(Path(teacher_dir)).get("base_model")
        return str(base) if base else None
    return setting


def _identity(source: str | None) -> dict:
    """The encoder's name and hashes, read from its files without loading it."""
    # transformers (backbone, title encoder): only when a backbone is resolved
    from leadercli.models.backbone import DEFAULT_PACKAGE, backbone_id, resolve_backbone
    from leadercli.models.title_encoder import weights_hash

    path = resolve_backbone(source)
    info = backbone_id(path)
    return {
        "name": info["name"],
        "source": None if info["name"] == DEFAULT_PACKAGE else path,
        "config_hash": info["config_hash"],
        "weights_hash": weights_hash(path),
    }


def _reused(path: Path, vocab_hash: str, ident: dict) -> tuple[torch.Tensor, dict] | None:
    """The run folder's table when it was made for this vocabulary by this encoder, else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        entry = json.loads(meta.get("entry", "{}"))
        table = code_titles.read_table(path.parent, entry, int(entry.get("rows", -1)))
    except Exception:  # noqa: BLE001 - any unreadable or stale file is recomputed
        return None
    enc = entry.get("encoder") or {}
    same = all(enc.get(k) == ident[k] for k in ("config_hash", "weights_hash", "source"))
    return (table, entry) if same and meta.get("vocab_hash") == vocab_hash else None


def title_table(
    settings, encoder, vocab_hash: str, out: Path, dist
) -> tuple[torch.Tensor | None, dict | None]:
    """(table (V, D), manifest entry) for `settings.student.code_text` ≠ none, else (None, None). The main
    process computes and writes it, the others then read it (`distributed.main_first`)."""
    cfg = settings.student
    if cfg.code_text == "none":
        return None, None
    source = encoder_source(cfg.code_text_encoder, Path(settings.paths.teacher))
    path = Path(out) / code_titles.FILE
    # loading a Hugging Face model may draw random numbers: the student's initial weights must not depend on it
    with distributed.main_first(dist), torch.random.fork_rng(devices=[]):
        ident = _identity(source)
        got = _reused(path, vocab_hash, ident)
        if got is not None:
            table, entry = got
            console.info(
                f"code titles: reusing {path} ({entry['titled']:,} titles, {entry['encoder']['name']})"
            )
        else:
            te = code_titles.load_title_encoder(source)
            titles = code_titles.vocab_titles(encoder)
            with console.step(f"embedding {sum(1 for t in titles if t):,} code titles"):
                table = code_titles.build_table(titles, te)
            entry = {
                "file": code_titles.FILE,
                "encoder": {**te.record(), "source": ident["source"]},
                "encoder_setting": cfg.code_text_encoder,
                "rows": int(table.shape[0]),
                "dim": int(table.shape[1]),
                "titled": sum(1 for t in titles if t),
                "sha256": code_titles.table_digest(table),
            }
            if dist.main:
                meta = {"vocab_hash": vocab_hash, "entry": json.dumps(entry)}
                code_titles.write_table(path, table, meta)
    return table, {**entry, "mode": cfg.code_text}
