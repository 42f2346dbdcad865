from __future__ import annotations

from datetime import datetime

import polars as pl
import torch

from leadercli.data.artifact import Artifact
from leadercli.data.batching import PAD, UNK_DIAG, Encoder
from leadercli.data.samples import load_samples, samples_from_frame


def _frame():
    return pl.DataFrame(
        {
            "subject_id": [1, 1, 1, 2],
            "hadm_id": [30, 10, 20, 40],
            "admittime": [
                datetime(2100, 3, 1),
                datetime(2100, 1, 1),
                datetime(2100, 2, 1),
                datetime(2100, 1, 1),
            ],
            "diagnoses": [["D9:c"], ["D9:a"], ["D9:b"], ["D9:z"]],
            "procedures": [["P9:3"], ["P9:1"], ["P9:2"], ["P9:9"]],
            "medications": [["C"], ["A"], ["B"], ["Z"]],
            "insurance": ["x", "first", "y", None],
        }
    )


def test_target_is_last_by_admittime_and_history_most_recent():
    s = samples_from_frame(_frame(), ["insurance"], max_visits=2)
    assert [x.subject_id for x in s] == [1, 2]
    assert s[0].hadm_id == 30  # latest admission, although hadm 30 is not the largest-first row
    assert [v.diagnoses for v in s[0].visits] == [["D9:b"], ["D9:c"]]  # most recent 2 visits, target last
    assert s[0].n_visits == 3 and s[1].n_visits == 1
    assert s[0].profile == {"insurance": "first"}  # profile of the first visit
    assert s[1].profile == {"insurance": "unknown"}


def test_per_visit_expansion():
    s = samples_from_frame(_frame(), ["insurance"], max_visits=10, per_visit=True)
    assert [(x.subject_id, x.hadm_id, x.n_visits) for x in s] == [
        (1, 10, 1),
        (1, 20, 2),
        (1, 30, 3),
        (2, 40, 1),
    ]


def test_encoder_and_collate_no_leak(tiny_artifact):
    art = Artifact(tiny_artifact)
    samples = load_samples(art, "train")
    enc = Encoder(art.vocab)
    encoded = enc.encode_all(samples)
    batch = enc.collate(encoded[:8])
    B = 8
    assert batch["diag"].shape[0] == B and batch["visit_mask"].shape[0] == B
    assert batch["labels"].shape == (B, len(art.labels))
    for b, s in enumerate(samples[:8]):
        n = len(s.visits)
        assert batch["visit_mask"][b].sum().item() == n
        # target visit's drugs never appear as input
        assert (batch["med"][b, n - 1] == PAD).all()
        want = {art.vocab.medications.index[c] for c in s.target.medications}
        assert set(torch.nonzero(batch["labels"][b]).flatten().tolist()) == want
        got = set(batch["target_meds"][b][batch["target_meds"][b] > 0].tolist())
        assert got == {i + enc.med_offset for i in want}
    # two diagnosis codes are outside the vocab in the synthetic artifact → UNK ids, counted
    all_enc = enc.encode_all(load_samples(art, None))
    assert enc.unknown.codes["diagnoses"] > 0
    assert any(UNK_DIAG in codes for e in all_enc for codes in e.diag)
