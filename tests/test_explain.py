"""`leader predict --explain K` (issue 24 items 1, 7): occlusion on a hand-built model whose answer is known, the
tensor and the sample (teacher) paths agree, contributions equal a brute-force re-scoring of the record without
each code, and the columns round-trip through CSV and parquet."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from leadercli.cli.main import app
from leadercli.data.artifact import CodeList, Vocab
from leadercli.data.batching import Encoder
from leadercli.explain import Explainer, Positions, pad_width, top_codes
from leadercli.predict import PredictOptions, predict_frame
from leadercli.scorer import Scorer, TensorScorer

runner = CliRunner()


def _vocab() -> Vocab:
    return Vocab(
        CodeList(["D9:A", "D9:B", "D9:C"], ["Alpha", "Beta", "Gamma"]),
        CodeList(["P9:X"], ["Ex"]),
        CodeList(["N01", "N02"], ["drug one", "drug two"]),
        profile={"gender": ["F", "M"]},
    )


class BagModel(torch.nn.Module):
    """A logistic model over the bag of every code of every visit: logit_m = bias_m + Σ_codes W[id, m]."""

    def __init__(self, weights: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = weights, bias  # (vocab, M), (M,)

    def probs(self, batch):
        z = self.b.expand(batch["diag"].shape[0], -1).clone()  # (B, M)
        for key in ("diag", "proc", "med"):
            ids = batch[key].flatten(1)  # (B, V·S)
            z += self.w[ids].sum(1)  # PAD (id 0) has a zero row
        return torch.sigmoid(z)


def _known_model():
    """D9:A drives N01 (+4), P9:X drives N01 a little (+1), D9:B lowers N01 (−2); N02 reads no code."""
    vocab = _vocab()
    enc = Encoder(vocab)
    w = torch.zeros(enc.vocab_size, 2)
    w[enc.diag_ids["D9:A"], 0] = 4.0
    w[enc.proc_ids["P9:X"], 0] = 1.0
    w[enc.diag_ids["D9:B"], 0] = -2.0
    b = torch.tensor([-3.0, 0.5])
    manifest = {"kind": "student", "labels": vocab.medications.codes}
    scorer = TensorScorer(None, manifest, vocab, 0.5, 10, unknown_shrink=0.0, module=BagModel(w, b))
    return scorer


class SampleScorer(Scorer):
    """The same model scored from `Sample`s (a run that reads no tensors, as the teacher): the sample path."""

    def __init__(self, tensor_scorer) -> None:
        ts = tensor_scorer
        super().__init__(None, ts.manifest, ts.vocab, ts.threshold, ts.max_visits, unknown_shrink=0.0)
        self.inner = ts
        self.calls = 0

    def score_samples(self, samples, batch_size=256, vocab=None, progress=None):
        self.calls += 1
        enc = self.inner.encoder
        return self.inner.score_batch(enc.collate(enc.encode_all(samples))).numpy()


def _visits() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subject_id": [1, 2, 2],
            "hadm_id": [10, 20, 21],
            "visit_no": [0, 0, 1],
            "diagnoses": [["D9:B", "D9:A", "D9:C"], ["D9:A"], ["D9:C", "D9:NEW"]],
            "procedures": [["P9:X"], [], ["P9:X"]],
            "medications": [["N02"], ["N01"], []],
            "gender": ["F", "M", "M"],
        }
    )


def _rows(frame: pl.DataFrame, sid: int, drug: str) -> dict:
    return frame.filter((pl.col("subject_id") == sid) & (pl.col("atc3") == drug)).row(0, named=True)


def test_occlusion_finds_the_code_that_drives_the_drug():
    scorer = _known_model()
    out = predict_frame(
        scorer, _visits(), PredictOptions(top_k=2, explain=3), {"diagnoses": {"D9:NEW": "New"}}
    )
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    r = _rows(out, 1, "N01")  # logit −3 + 4 + 1 − 2 = 0
    assert r["explain_codes"] == ["D9:A", "P9:X"]  # D9:B lowers N01 and D9:C does nothing: not listed
    assert r["explain_kinds"] == ["diagnosis", "procedure"]
    assert r["explain_titles"] == ["Alpha", "Ex"]
    assert r["explain_visits"] == ["target", "target"]
    assert r["explain_contributions"] == pytest.approx([sig(0) - sig(-4), sig(0) - sig(-1)], abs=1e-6)
    assert _rows(out, 1, "N02")["explain_codes"] == []  # N02 reads no code
    r = _rows(out, 2, "N01")  # D9:A in the history visit, P9:X in the target
    assert r["explain_codes"] == ["D9:A", "P9:X"]
    assert r["explain_visits"] == ["history", "target"]


def test_sample_path_matches_tensor_path_and_unknown_codes_keep_their_strings():
    ts = _known_model()
    ts.module.w[1, 1] = 0.7  # UNK diagnosis (id 1) raises N02: the unknown code is listed by its string
    opts = PredictOptions(top_k=2, explain=3)
    titles = {"diagnoses": {"D9:NEW": "A new code"}}
    a = predict_frame(ts, _visits(), opts, titles)
    ss = SampleScorer(ts)
    b = predict_frame(ss, _visits(), opts, titles)
    assert ss.calls == 2  # the records, then their occluded copies (one call per batch)
    cols = ["subject_id", "atc3", "explain_codes", "explain_kinds", "explain_titles", "explain_visits"]
    assert a.select(cols).equals(b.select(cols))
    np.testing.assert_allclose(
        a["explain_contributions"].explode().to_numpy(),
        b["explain_contributions"].explode().to_numpy(),
        atol=1e-6,
    )
    r = _rows(a, 2, "N02")
    assert r["explain_codes"] == ["D9:NEW"] and r["explain_titles"] == ["A new code"]


def test_explainer_handles_patients_without_codes():
    ts = _known_model()
    v = _visits().with_columns(
        pl.lit([], dtype=pl.List(pl.Utf8)).alias(c) for c in ("diagnoses", "procedures")
    )
    v = v.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("medications"))
    out = predict_frame(ts, v, PredictOptions(top_k=2, explain=2))
    assert out["explain_codes"].list.len().sum() == 0
    assert isinstance(Explainer(ts, 2).names.title_of(0, "D9:A"), str)


# -- a trained run: brute force and the file round trip --------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_artifact) -> Path:
    wd = tmp_path_factory.mktemp("explain")
    shutil.copytree(tiny_artifact, wd / "data" / "mimic3")
    (wd / "leader.toml").write_text("[student]\nepochs = 1\nbatch_size = 8\nhidden = 16\nff = 32\n")
    old = Path.cwd()
    try:
        os.chdir(wd)
        r = runner.invoke(app, ["train", "student", "-q"])
        assert r.exit_code == 0, r.output
    finally:
        os.chdir(old)
    return wd


def test_contributions_equal_rescoring_without_each_code(trained):
    from leadercli import Recommender

    rec = Recommender.load(trained / "runs" / "student")
    visits = pl.read_parquet(trained / "data" / "mimic3" / "visits.parquet")
    sid = visits.filter(pl.col("visit_no") == 1)["subject_id"][0]  # a patient with history
    p = visits.filter(pl.col("subject_id") == sid).with_columns(
        pl.when(pl.col("visit_no") == pl.col("visit_no").max())
        .then(pl.col("diagnoses").list.concat(pl.lit(["D9:UNSEEN"])))
        .otherwise(pl.col("diagnoses"))
        .alias("diagnoses")
    )
    out = rec.predict(p, top_k=3, explain=50)
    row = out.row(0, named=True)
    drug = row["atc3"]

    def score(frame):
        return rec.predict(frame, top_k=200).filter(pl.col("atc3") == drug)["score"][0]

    base = score(p)
    assert base == pytest.approx(row["score"])
    drops = {}
    for rowv in p.iter_rows(named=True):
        for kind in ("diagnoses", "procedures"):
            for j, code in enumerate(rowv[kind]):
                keep = [i for i in range(len(rowv[kind])) if i != j]
                q = p.with_columns(
                    pl.when(pl.col("visit_no") == rowv["visit_no"])
                    .then(pl.col(kind).list.gather(keep))
                    .otherwise(pl.col(kind))
                    .alias(kind)
                )
                drops[(code, rowv["visit_no"])] = base - score(q)
    got = {
        (c, v): x
        for c, v, x in zip(
            row["explain_codes"], row["explain_visits"], row["explain_contributions"], strict=True
        )
        if not c.startswith("N")
        and c[:1] in "DP"  # diagnoses and procedures (drugs are checked by the model tests)
    }
    last = p["visit_no"].max()
    want = {(c, "target" if v == last else "history"): x for (c, v), x in drops.items() if x > 0}
    assert set(got) == set(want)
    for k, x in got.items():
        assert x == pytest.approx(want[k], abs=1e-5)
    assert row["explain_contributions"] == sorted(row["explain_contributions"], reverse=True)


def test_explain_columns_round_trip_through_csv_and_parquet(trained):
    csv, pq = trained / "e.csv", trained / "e.parquet"
    old = Path.cwd()
    try:
        os.chdir(trained)
        for out in (csv, pq):
            r = runner.invoke(
                app,
                [
                    "predict",
                    "data/mimic3/visits.parquet",
                    "-o",
                    str(out),
                    "--explain",
                    "2",
                    "--top-k",
                    "3",
                    "-q",
                ],
            )
            assert r.exit_code == 0, r.output
    finally:
        os.chdir(old)
    a = pl.read_parquet(pq)
    b = pl.read_csv(csv)
    assert a.schema["explain_codes"] == pl.List(pl.Utf8)
    assert a.schema["explain_contributions"] == pl.List(pl.Float32)
    assert b.schema["explain_codes"] == pl.Utf8  # plain text in CSV
    assert a.height == b.height and a["explain_codes"].list.len().sum() > 0
    for name in ("explain_codes", "explain_kinds", "explain_visits"):
        assert b[name].fill_null("").to_list() == a[name].list.join(";").to_list()
    back = b["explain_contributions"].fill_null("").str.split(";").to_list()
    for got, want in zip(back, a["explain_contributions"].to_list(), strict=True):
        assert [float(x) for x in got if x] == pytest.approx(want, abs=6e-5)
    import json

    meta = json.loads(Path(f"{pq}.meta.json").read_text())
    assert meta["explain"]["k"] == 2 and meta["explain"]["method"] == "occlusion"


def test_csv_text_of_list_columns():
    import pyarrow as pa

    from leadercli.predict.output import csv_table

    t = pa.table(
        {
            "explain_titles": pa.array([["a; b", "c"], []], pa.list_(pa.string())),
            "explain_contributions": pa.array([[0.123456, 0.5], []], pa.list_(pa.float32())),
        }
    )
    out = csv_table(t)
    assert out["explain_titles"].to_pylist() == ["a, b;c", ""]  # a title's own `;` would split it
    assert out["explain_contributions"].to_pylist() == ["0.1235;0.5", ""]


def test_student_set_by_set_copies_equal_whole_copies(trained):
    """`models/student_occlusion.py` re-encodes only the changed set: the same scores as scoring whole copies."""
    from leadercli import explain
    from leadercli.models import student_occlusion
    from leadercli.runs import load_run

    scorer = load_run(trained / "runs" / "student")
    assert student_occlusion.supports(scorer.module)
    visits = pl.read_parquet(trained / "data" / "mimic3" / "visits.parquet")
    for batch in scorer.encoder.encode_frame(visits, 10, 16, labels=False, by_length=True):
        pos = explain.tensor_positions(batch)
        fast = explain.occluded_scores_tensors(scorer, batch, pos, chunk=7)
        whole = scorer.score_batch(explain.occlude_tensors(batch, pos, 0, len(pos))).numpy()
        np.testing.assert_allclose(fast, whole, atol=1e-6)


def test_a_huge_k_lists_every_lowering_code_without_huge_arrays():
    """`--explain 10000` (every code) sizes its arrays by the codes a patient has, not by K; batches of
    different widths are joined (padded) and the lists equal those of a K just above the codes present."""
    scorer = _known_model()
    opts = PredictOptions(top_k=2, explain=10_000)
    z = np.zeros(3, np.int64)
    pos = Positions(np.array([0, 0, 1]), z, z, np.array([0, 1, 0]), np.zeros(3, bool), ids=z)
    occ = np.array([[0.1, 0.5], [0.4, 0.5], [0.0, 0.0]], np.float32)  # copies' scores; base 0.5
    sel, val = top_codes(
        np.full((2, 2), 0.5, np.float32), occ, pos, 2, np.array([0, 1]), np.zeros(2, int), 10_000
    )
    assert sel.shape == val.shape == (2, 2)  # two codes at most per patient, not 10,000
    assert sel.tolist() == [[0, 1], [2, -1]] and val[0].tolist() == pytest.approx([0.4, 0.1])
    big = predict_frame(scorer, _visits(), opts)
    small = predict_frame(scorer, _visits(), PredictOptions(top_k=2, explain=8))
    assert big.equals(small)
    assert _rows(big, 1, "N01")["explain_codes"] == ["D9:A", "P9:X"]
    widths = pad_width([np.full((1, 1), None, object), np.full((2, 3), "x", object)])
    assert [w.shape for w in widths] == [(1, 3), (2, 3)] and widths[0][0, 1] is None
    assert np.isnan(pad_width([np.zeros((1, 1), np.float32), np.zeros((1, 2), np.float32)])[0][0, 1])
