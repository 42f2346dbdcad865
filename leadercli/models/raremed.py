"""RAREMed (Zhao et al., "Leave No Patient Behind: Enhancing Medication Recommendation for Rare Disease
Patients", SIGIR 2024, arXiv 2403.17745). Reference code: zzhUSTC2016/RAREMed `src/models/RAREMed.py`,
`src/main_RAREMed.py`.

Why this model (issue 22: one modern molecule-free model that handles single visits): RAREMed is the 2024 model
built for the patients LEADER cares about: it scores each visit from that visit's own codes (no history, so a
first visit is no special case), it was designed and evaluated for fairness to rare-disease patients, it needs
no molecule structures (only diagnosis and procedure codes and the DDI graph), and its authors publish complete
code with every hyper-parameter, so it can be reproduced faithfully.

Model: a transformer encoder over one token sequence per visit, [CLS] diagnoses [SEP] procedures; token =
code (or special) embedding + segment embedding ([CLS], diagnoses and [SEP]: 0, procedures: 1) + one learned
vector per stream; logits = Linear(hidden state of [CLS]). Pre-training on the training split's target visits
(`pretrain`): sequence matching prediction (SMP: do these diagnoses and procedures belong together?), then
self-reconstruction (SR: the visit's codes from [CLS]), `pretrain_epochs` each, before the shared training loop.
Fine-tuning loss: (1 − w_m)·BCE + w_m·margin + w_ddi·0.0005·Σ σσᵀ ⊙ A; `extra_loss` gives the last two divided
by (1 − w_m).

A patient without history is scored like every patient: RAREMed only reads the target visit.

Where it differs from the authors' code, and why:
- Positions: the authors' learnable positional encoding indexes the batch axis of a sequence-first tensor, so every
  token of a stream gets the embedding of position 0; that constant per stream is what is kept here (codes of a
  visit are a set; the model is unchanged).
- SMP: the authors apply softmax cross-entropy to the two sigmoid outputs of a positive and a negative pair; here
  BCE on the match logit, with in-batch negatives (a patient's diagnoses with the next patient's procedures, or
  the reverse, by a seeded coin), instead of a random training visit with different procedures.
- SR runs without masking (the authors' default mask_prob is 0), over all non-drug ids (the UNK ids included).
- The paper's "relevance embedding" is not in the authors' code (its flag is parsed and never read): left out.
- Pre-training sees only the training split (the authors' SMP negatives come from training and validation).
- One sample per patient (the target visit) and the shared loop's batches and early stopping on validation
  PRAUC (the authors: every visit, batch 1, 60 epochs, early stop on Jaccard). The optimizer is AdamW with
  decoupled weight decay, as the authors' (`optimizer = "adamw"`).
- Unknown codes have their own embeddings; one table for diagnoses and procedures (disjoint ids).

Hyper-parameters (`[raremed]` in settings, the authors' defaults): emb_dim 512, layers 3, heads 4, ff 2048
(torch's default, which the authors keep), dropout 0.3, lr 1e-5, weight_decay 0.1, weight_multi 0.005, weight_ddi
0.1, ddi_scale 0.0005, pretrain_epochs 20.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from leadercli.config_checks import check_heads
from leadercli.models.field import FieldModel, FieldOutput, at_target, margin_loss, soft_ddi, target_index


@dataclass
class RAREMedConfig:
    med_offset: int  # unified id of drug 0 (ids below it: PAD, UNKs, diagnoses, procedures)
    n_labels: int  # M, drugs
    emb_dim: int = 512  # transformer width
    layers: int = 3  # encoder layers
    heads: int = 4  # attention heads (emb_dim divisible by heads)
    ff: int = 2048  # feed-forward width (torch's default, kept by the authors)
    dropout: float = 0.3  # dropout inside the encoder layers
    weight_multi: float = 0.005  # weight of the multilabel margin loss (BCE gets 1 − it)
    weight_ddi: float = 0.1  # weight of the DDI loss
    ddi_scale: float = 0.0005  # the DDI loss is ddi_scale · Σ σσᵀ ⊙ A

    def __post_init__(self) -> None:
        check_heads(self.emb_dim, self.heads, "raremed emb_dim")


class RAREMed(FieldModel):
    kind = "raremed"
    no_history = "as every patient: it reads the target visit only"
    optimizer = "adamw"

    def __init__(self, config: RAREMedConfig, ddi_adj: torch.Tensor) -> None:
        """ddi_adj (M, M) 0/1: the run's DDI graph (a buffer, saved with the weights)."""
        super().__init__()
        self.config = c = config
        d = c.emb_dim
        self.embed = nn.Embedding(c.med_offset, d, padding_idx=0)
        self.special = nn.Embedding(2, d)  # [CLS], [SEP]
        self.segment = nn.Embedding(2, d)
        self.stream = nn.Embedding(2, d)  # the authors' per-stream "position 0" vectors
        for e in (self.embed, self.special, self.segment, self.stream):
            nn.init.uniform_(e.weight, -0.1, 0.1)  # the authors' init
        layer = nn.TransformerEncoderLayer(d, c.heads, c.ff, c.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.cls_final = nn.Linear(d, c.n_labels)
        self.cls_mask = nn.Linear(d, c.med_offset)  # SR head (pre-training)
        self.cls_nsp = nn.Linear(d, 1)  # SMP head (pre-training)
        self.register_buffer("ddi_adj", ddi_adj.float())  # (M, M)

    def encode(self, diag: torch.Tensor, proc: torch.Tensor) -> torch.Tensor:
        """One visit per row: diag (B, Sd), proc (B, Sp) unified ids → hidden state of [CLS] (B, d)."""
        B, Sd, Sp = diag.shape[0], diag.shape[1], proc.shape[1]
        dev = diag.device
        special = self.special.weight  # (2, d)
        tok = torch.cat(
            [special[0].expand(B, 1, -1), self.embed(diag), special[1].expand(B, 1, -1), self.embed(proc)],
            dim=1,
        )  # (B, 2 + Sd + Sp, d)
        seg = torch.tensor([0] * (Sd + 2) + [1] * Sp, device=dev)  # [CLS], diagnoses, [SEP] | procedures
        stream = torch.tensor(
            [0] * (Sd + 1) + [1] * (Sp + 1), device=dev
        )  # [CLS] diagnoses | [SEP] procedures
        x = tok + self.segment(seg) + self.stream(stream)  # (B, S, d)
        one = torch.ones(B, 1, dtype=torch.bool, device=dev)
        pad = ~torch.cat([one, diag > 0, one, proc > 0], dim=1)  # (B, S) True = padding
        return self.encoder(x, src_key_padding_mask=pad)[:, 0]  # (B, d)

    def _target_codes(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        last = target_index(batch["visit_mask"])  # (B,)
        return at_target(batch["diag"], last), at_target(batch["proc"], last)  # (B, Sd), (B, Sp)

    def forward(self, batch: dict[str, torch.Tensor]) -> FieldOutput:
        return FieldOutput(self.cls_final(self.encode(*self._target_codes(batch))))  # (B, M)

    def extra_loss(self, output: FieldOutput, batch: dict[str, torch.Tensor]) -> dict:
        c = self.config
        probs = torch.sigmoid(output.logits)  # (B, M)
        w = 1.0 - c.weight_multi  # the BCE weight: the loop adds BCE with weight 1
        return {
            "margin": (c.weight_multi / w, margin_loss(probs, batch["labels"])),
            "ddi": (c.weight_ddi * c.ddi_scale / w, soft_ddi(probs, self.ddi_adj).mean()),
        }

    def pretrain_loss(
        self, batch: dict[str, torch.Tensor], task: str, generator: torch.Generator
    ) -> torch.Tensor:
        """SMP ("smp") or SR ("sr") loss on the target visits of a batch."""
        diag, proc = self._target_codes(batch)
        if task == "sr":
            codes = torch.cat([diag, proc], dim=1)  # (B, S)
            target = torch.zeros(len(codes), self.config.med_offset, device=codes.device)
            target.scatter_(1, codes, 1.0)
            target[:, 0] = 0.0  # PAD is not a code
            return F.binary_cross_entropy_with_logits(self.cls_mask(self.encode(diag, proc)), target)
        B = len(diag)
        swap_proc = torch.rand(B, generator=generator) < 0.5  # (B,) which side of a negative pair is replaced
        swap_proc = swap_proc.to(diag.device).unsqueeze(1)
        neg_diag = torch.where(swap_proc, diag, diag.roll(1, 0))  # (B, Sd) the next patient's, or own
        neg_proc = torch.where(swap_proc, proc.roll(1, 0), proc)  # (B, Sp)
        logits = self.cls_nsp(self.encode(torch.cat([diag, neg_diag]), torch.cat([proc, neg_proc]))).squeeze(
            1
        )  # (2B,)
        target = torch.cat([torch.ones(B), torch.zeros(B)]).to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, target)


def pretrain(model: RAREMed, batches, epochs: int, lr: float, weight_decay: float, seed: int, device) -> list:
    """The authors' two pre-training stages on the training batches (`batches(i)` yields the batches of the i-th
    pre-training epoch, i counting over both stages): SMP for `epochs` epochs, then SR for `epochs` epochs,
    AdamW. Returns one record per epoch {pretrain: task, pretrain_epoch, loss}."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    log = []
    model.train()
    for stage, task in enumerate(("smp", "sr")):
        for epoch in range(epochs):
            total, n = 0.0, 0
            for batch in batches(stage * epochs + epoch):
                if task == "smp" and len(batch["visit_mask"]) < 2:
                    continue  # no in-batch negative
                loss = model.pretrain_loss({k: v.to(device) for k, v in batch.items()}, task, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, n = total + float(loss.detach()), n + 1
            log.append({"pretrain": task, "pretrain_epoch": epoch + 1, "loss": total / max(n, 1)})
    return log
