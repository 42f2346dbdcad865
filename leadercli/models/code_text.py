"""Code embeddings that read code titles (issue 25): a code's input vector is its learned id embedding plus a
learned projection of a fixed sentence embedding of its title, so that a code the run never saw in training,
whose title is known, still means something to the student.

LEADER (Liu et al., arXiv 2402.02803) carries the meaning of codes only through its LLM teacher, and its
student (`models/student.py`, reference `models/LEADER.py`) embeds ids; here the student reads the titles
itself. The title embeddings are fixed (`models/title_encoder.py`: the bundled MiniLM, mean-pooled and
normalised) and computed once per vocabulary; only the projection is learned.

Modes (`student.code_text`, `StudentConfig.code_text`):
- none: the student keeps its plain `nn.Embedding` (the reference; no `CodeEmbedding` at all);
- both: id embedding + Linear(D → d, no bias)(title embedding);
- text: the projected title alone for every code that has a title; codes without one (PAD, the UNK ids, vocab
  codes without a title) keep their id embedding (ablation: what the titles carry by themselves).

Extension rows (`extend`): at prediction, codes the run does not know but whose title is given get ids after the
vocabulary's (`leadercli.code_titles`); their row is the projection of their title, the id part zero. The
medication label ids never move. The speed paths read `weight` (the whole table) or call the module on ids,
as they do an `nn.Embedding`; in eval mode the table is computed once and kept until a weight changes or rows
are added (`cache_key`).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("none", "both", "text")
_GROWTH = itertools.count(1)  # a process-wide counter: every extension gets a key no earlier one had


class CodeEmbedding(nn.Module):
    """`ids` (an `nn.Embedding` (V, d), padding_idx 0) plus Linear(D → d)(title embedding); `text` (V, D) is set
    with `set_text` (a buffer, not saved with the weights: the run keeps it in its own file)."""

    def __init__(self, ids: nn.Embedding, text_dim: int, mode: str) -> None:
        super().__init__()
        if mode not in MODES[1:]:
            raise ValueError(f"code_text mode {mode!r} is not one of {', '.join(MODES[1:])}")
        V, d = ids.num_embeddings, ids.embedding_dim
        self.mode = mode
        self.ids = ids
        self.proj = nn.Linear(text_dim, d, bias=False)
        # a unit-norm title embedding then gives N(0, 1) components, the scale of the id rows (nn.Embedding init)
        nn.init.normal_(self.proj.weight, std=1.0)
        self.register_buffer("text", torch.zeros(V, text_dim), persistent=False)  # (V, D), zero = no title
        self.register_buffer("id_rows", torch.ones(V), persistent=False)  # (V,) 1 = the id embedding is used
        self.register_buffer("extra", torch.zeros(0, text_dim), persistent=False)  # (n, D) extension rows
        self.grown = 0  # changes whenever rows are added (`cache_key`)
        self._table: tuple | None = None  # (key, (V + n, d) table) in eval mode

    @property
    def vocab_size(self) -> int:
        return self.text.shape[0]

    @property
    def num_ids(self) -> int:
        """Ids in use: the vocabulary's and the extension's."""
        return self.text.shape[0] + self.extra.shape[0]

    @torch.no_grad()
    def set_text(self, text: torch.Tensor) -> None:
        """The vocabulary's title embeddings (V, D), rows in unified id order, zero where a code has no title."""
        if tuple(text.shape) != tuple(self.text.shape):
            raise ValueError(f"title table of shape {tuple(text.shape)}, expected {tuple(self.text.shape)}")
        self.text.copy_(text)
        titled = text.abs().sum(1) > 0  # (V,)
        self.id_rows.copy_((~titled).float() if self.mode == "text" else torch.ones_like(self.id_rows))

    @torch.no_grad()
    def extend(self, text: torch.Tensor) -> int:
        """Add rows for codes the vocabulary does not know from their title embeddings (n, D); returns the id
        of the first one (the others follow). Rows are only ever added, so ids handed out stay valid."""
        first = self.num_ids
        self.extra = torch.cat([self.extra, text.to(self.extra)])  # (n_old + n, D)
        self.grown = next(_GROWTH)
        return first

    def sources(self) -> tuple[torch.Tensor, ...]:
        """The tensors the table is made of (updated in place, so their versions show every change)."""
        return self.ids.weight, self.proj.weight, self.text, self.id_rows

    def cache_key(self) -> tuple:
        """Changes whenever the table does (for the eval path's own caches, `models/student_eval.py`)."""
        return tuple((t.data_ptr(), t._version) for t in self.sources()), self.grown

    def _full(self) -> torch.Tensor:
        w = self.ids.weight * self.id_rows.unsqueeze(1) + self.proj(self.text)  # (V, d)
        if self.extra.shape[0]:
            w = torch.cat([w, self.proj(self.extra)])  # (V + n, d), the id part of new codes is zero
        return w

    @property
    def weight(self) -> torch.Tensor:
        """The whole table (V + n, d); outside training it is computed once per `cache_key`."""
        if self.training and torch.is_grad_enabled():
            return self._full()
        key = self.cache_key()
        hit = self._table
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = self._table = (key, self._full())
        return hit[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) → (..., d)."""
        if self.training and torch.is_grad_enabled():  # only the rows of the codes present
            return self.ids(ids) * self.id_rows[ids].unsqueeze(-1) + self.proj(self.text[ids])  # (..., d)
        return F.embedding(ids, self.weight)  # (..., d)
