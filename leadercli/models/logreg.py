"""Multi-hot logistic regression over the target visit's codes: the classic non-neural baseline of the
medication-recommendation papers (GAMENet AAAI 2019, SafeDrug IJCAI 2021, MICRON IJCAI 2021, RAREMed SIGIR 2024:
"LR"). Reference code: `code/baseline/train_LR.py` of sjy1203/GAMENet and `src/Baselines/main_LR.py` of
zzhUSTC2016/RAREMed — scikit-learn `OneVsRestClassifier(LogisticRegression(C=0.90909))` on the multi-hot of a
visit's diagnoses and procedures.

logits = W · x + b, x the multi-hot (unified ids below the first drug id) of the target visit's diagnosis and
procedure codes; one independent logistic regression per drug (W (M, med_offset), computed as an
`EmbeddingBag` sum of W's columns for the codes present).

Every patient is scored from the target visit alone, so a single-visit patient is treated exactly as any other
(there is no history in the model).

Where it differs from the authors' code, and why:
- Fitted by the shared loop (Adam minibatches, early stopping on validation PRAUC) instead of scikit-learn's
  full-batch lbfgs per drug: one protocol for every model. The objective is scikit-learn's: the loop's mean BCE
  plus `extra_loss` "l2" = ‖W‖² / (2·C·N·M) (N training samples, M drugs; bias not penalised), which is
  sklearn's Σ_m [½‖w_m‖² + C·Σ_i logloss] divided by C·N·M.
- Codes unknown to the vocabulary have their own columns (UNK diagnosis, UNK procedure) instead of being
  dropped; they are learned like any code.
- One sample per patient (the target visit) instead of every visit, as for every model here.

Hyper-parameters (`[logreg]` in settings): C (inverse L2 strength, 0.90909 as in the reference), lr.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from leadercli.models.field import FieldModel, FieldOutput, target_index


@dataclass
class LogRegConfig:
    med_offset: (
        int  # unified id of drug 0 = number of ids that can be inputs (PAD, UNKs, diagnoses, procedures)
    )
    n_labels: int  # M, drugs
    n_train: int = 1  # training samples N (scales the L2 term as scikit-learn's C does)
    C: float = 0.90909  # inverse L2 strength (scikit-learn C; the reference's value)


class LogReg(FieldModel):
    kind = "logreg"
    no_history = "as every patient: it reads the target visit only"

    def __init__(self, config: LogRegConfig) -> None:
        super().__init__()
        self.config = c = config
        self.weight = nn.EmbeddingBag(c.med_offset, c.n_labels, mode="sum", padding_idx=0)  # W^T (ids, M)
        nn.init.zeros_(self.weight.weight)  # scikit-learn starts from zero
        self.bias = nn.Parameter(torch.zeros(c.n_labels))

    def forward(self, batch: dict[str, torch.Tensor]) -> FieldOutput:
        last = target_index(batch["visit_mask"])  # (B,)
        rows = torch.arange(len(last), device=last.device)
        ids = torch.cat([batch["diag"][rows, last], batch["proc"][rows, last]], dim=1)  # (B, Sd + Sp)
        ids = ids.masked_fill(ids >= self.config.med_offset, 0)  # drug ids are never inputs
        return FieldOutput(self.weight(ids) + self.bias)  # (B, M)

    def extra_loss(self, output: FieldOutput, batch: dict[str, torch.Tensor]) -> dict:
        c = self.config
        w = 1.0 / (2.0 * c.C * max(c.n_train, 1) * c.n_labels)
        return {"l2": (w, self.weight.weight.pow(2).sum())}
