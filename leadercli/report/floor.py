"""The popularity floor of both reports (`leader report RUN...` and `leader report --predictions`): the
popularity baseline fitted on the artifact's training split with the fit `leader train student --model
popularity` makes (`baselines.fit_popularity`), its threshold tuned on validation (max Jaccard) unless
`student.threshold` fixes it, scored like a popularity run (a `scorer.TensorScorer` without a run folder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leadercli import metrics
from leadercli.data.artifact import DDI, Artifact
from leadercli.data.samples import load_samples
from leadercli.errors import ArtifactError
from leadercli.models.baselines import PopularityModel, fit_popularity
from leadercli.report import evaluate
from leadercli.scorer import TensorScorer


@dataclass
class Floor:
    scorer: TensorScorer  # kind "popularity", path None
    threshold: dict  # {"value", "how"}
    frequency: np.ndarray  # (M,) float32 training-split drug shares (also the report's drug frequencies)


def fit_floor(artifact: Artifact, settings) -> Floor:
    sp = settings.samples
    idx = artifact.vocab.medications.index
    train = load_samples(artifact, "train", 1, sp.per_visit)
    if not train:
        raise ArtifactError(
            f"artifact {artifact.path} has no training patients to fit the popularity floor on",
            "Re-run `leader preprocess` with a training split",
        )
    labels = [sorted({idx[c] for c in s.target.medications if c in idx}) for s in train]
    freq = fit_popularity(labels, len(idx))  # (M,)
    val = load_samples(artifact, "val", 1, sp.per_visit)
    y_val = evaluate.multi_hot(val, idx)
    p_val = np.broadcast_to(freq.numpy(), y_val.shape)
    th = metrics.choose_threshold(settings.student.threshold, y_val, p_val)
    threshold = {**th, "how": f"{th['how']}; popularity fitted by the report on the training split"}
    scorer = TensorScorer(
        None,
        {"kind": "popularity"},
        artifact.vocab,
        threshold["value"],
        sp.max_visits,
        module=PopularityModel(freq),
        ddi_path=artifact.path / DDI,
    )
    return Floor(scorer, threshold, freq.numpy())
