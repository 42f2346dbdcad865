"""`Encoder.encode_frame` (the vectorised path of `leader predict`) against `samples_from_frame` → `Encoder.encode`
→ `collate`: the same tensors, batch by batch, and the same unknown counts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from leadercli.data.artifact import Artifact, CodeList, Vocab
from leadercli.data.batching import Encoder, batches
from leadercli.data.samples import samples_from_frame
from leadercli.predict.input import prefix_raw


def _assert_same(
    vocab: Vocab, df: pl.DataFrame, max_visits: int, batch_size: int, by_length: bool = False
) -> None:
    ref_enc = Encoder(vocab)
    samples = samples_from_frame(df, ref_enc.profile_fields, max_visits=max_visits)
    order = np.argsort([len(s.visits) for s in samples], kind="stable") if by_length else None
    ref = list(batches(ref_enc.encode_all(samples), batch_size, ref_enc.collate, order=order))
    enc = Encoder(vocab)
    got = enc.encode_frame(df, max_visits, batch_size, by_length=by_length)
    assert len(got) == len(ref)
    for i, (a, b) in enumerate(zip(ref, got, strict=True)):
        if by_length:
            assert b.pop("sample").tolist() == order[i * batch_size : (i + 1) * batch_size].tolist()
        assert list(a) == list(b)
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            assert a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), key
    assert enc.unknown == ref_enc.unknown


@pytest.mark.parametrize("by_length", [False, True])
@pytest.mark.parametrize("max_visits, batch_size", [(10, 1000), (2, 7), (1, 5), (3, 1)])
def test_same_tensors_on_the_synthetic_artifact(
    tiny_artifact: Path, max_visits: int, batch_size: int, by_length: bool
):
    art = Artifact(tiny_artifact)
    _assert_same(art.vocab, art.visits(), max_visits, batch_size, by_length)


def test_same_tensors_on_raw_icd_codes_unsorted_with_nulls(tiny_artifact: Path):
    art = Artifact(tiny_artifact)
    visits = art.visits()
    raw = visits.with_columns(
        pl.col("diagnoses").list.eval(pl.element().str.replace(r"^D9:", "")),
        pl.col("procedures").list.eval(pl.element().str.replace(r"^P9:", "").str.replace(r"^38", "38.")),
        pl.lit(9).alias("icd_version"),
    )
    # rows shuffled (samples sort them), a null list, an empty list, an unseen drug, a null / empty profile
    raw = raw.sample(fraction=1.0, shuffle=True, seed=1).with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("procedures")).alias("procedures"),
        pl.when(pl.int_range(pl.len()) == 4).then([]).otherwise(pl.col("diagnoses")).alias("diagnoses"),
        pl.col("medications").list.concat(pl.lit(["Z99X"])),
        pl.when(pl.int_range(pl.len()) % 5 == 0).then(None).otherwise(pl.col("insurance")).alias("insurance"),
        pl.when(pl.int_range(pl.len()) % 7 == 0)
        .then(pl.lit(""))
        .otherwise(pl.col("language"))
        .alias("language"),
    )
    prefixed = prefix_raw(raw, Path("raw.parquet"), None)
    assert prefixed["diagnoses"].explode().drop_nulls().str.starts_with("D9:").all()
    for max_visits, batch_size, by_length in [(10, 16, False), (2, 3, False), (10, 5, True)]:
        _assert_same(art.vocab, prefixed, max_visits, batch_size, by_length)
    # ordered by admittime (then hadm_id) when there is no visit_no; a profile field missing from the file;
    # no medications column
    _assert_same(art.vocab, prefixed.drop("visit_no", "religion"), 10, 8)
    _assert_same(art.vocab, prefixed.drop("medications"), 3, 8, by_length=True)


def _tiny_vocab() -> Vocab:
    return Vocab(
        CodeList(["D9:a", "D9:b"], ["a", "b"]),
        CodeList(["P9:1"], ["1"]),
        CodeList(["A01A", "B01A"], ["x", "y"]),
        {"insurance": ["first", "unknown"]},
    )


def test_hand_computed_batch():
    # ids: PAD 0, UNK diag 1, UNK proc 2, UNK med 3, D9:a 4, D9:b 5, P9:1 6, A01A 7, B01A 8
    df = pl.DataFrame(
        {
            "subject_id": [2, 1, 1, 1],
            "hadm_id": [40, 30, 10, 20],
            "admittime": [
                datetime(2100, 1, 1),
                datetime(2100, 3, 1),
                datetime(2100, 1, 1),
                datetime(2100, 2, 1),
            ],
            "diagnoses": [["D9:z"], ["D9:b", "D9:a", "D9:a"], ["D9:a"], None],
            "procedures": [["P9:1"], [], ["P9:9"], ["P9:1"]],
            "medications": [["B01A"], ["A01A", "B01A"], ["A01A"], ["Q", "B01A"]],
            "insurance": [None, "x", "first", "y"],
        }
    )
    enc = Encoder(_tiny_vocab())
    (b,) = enc.encode_frame(df, max_visits=2, batch_size=4)
    # subject 1: visits by admittime 10, 20, 30 → window (20, 30), target hadm 30; subject 2: one visit
    assert b["subject_id"].tolist() == [1, 2] and b["hadm_id"].tolist() == [30, 40]
    assert b["n_visits"].tolist() == [3, 1]
    assert b["visit_mask"].tolist() == [[True, True], [True, False]]
    assert b["diag"].tolist() == [[[0, 0, 0], [5, 4, 4]], [[1, 0, 0], [0, 0, 0]]]
    assert b["proc"].tolist() == [[[6], [0]], [[6], [0]]]
    assert b["med"].tolist() == [[[3, 8], [0, 0]], [[0, 0], [0, 0]]]  # history drugs only
    assert b["profile"].tolist() == [[1], [2]]  # the first visit's "first"; null → "unknown" (id 2)
    assert b["labels"].tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert b["target_meds"].tolist() == [[7, 8], [8, 0]]
    assert enc.unknown.codes == {"diagnoses": 1, "procedures": 0, "medications": 1}
    assert enc.unknown.profile == 0
    _assert_same(_tiny_vocab(), df, 2, 4)
    _assert_same(_tiny_vocab(), df, 2, 1)


def test_empty_frame():
    df = pl.DataFrame(
        {
            "subject_id": [],
            "hadm_id": [],
            "visit_no": [],
            "diagnoses": [],
            "procedures": [],
            "medications": [],
        },
        schema={
            "subject_id": pl.Int64,
            "hadm_id": pl.Int64,
            "visit_no": pl.Int32,
            "diagnoses": pl.List(pl.Utf8),
            "procedures": pl.List(pl.Utf8),
            "medications": pl.List(pl.Utf8),
        },
    )
    assert Encoder(_tiny_vocab()).encode_frame(df, 10, 4) == []
