"""`leader predict` streaming: several record batches with subjects carried over between them, batches in
visit-count order written back in subject order — the output equals scoring the samples of the whole file
through the training path (`samples_from_frame` → `Encoder.encode` → `collate` → model)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from leadercli.cli.main import app
from leadercli.data.batching import batches
from leadercli.data.samples import samples_from_frame
from leadercli.runs import load_run

runner = CliRunner()
TOP_K = 5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_artifact) -> Path:
    wd = tmp_path_factory.mktemp("stream")
    shutil.copytree(tiny_artifact, wd / "data" / "mimic3")
    (wd / "leader.toml").write_text(
        "[student]\nepochs = 1\nbatch_size = 8\nhidden = 16\nff = 32\n[predict]\nbatch_size = 300\nunknown_shrink = 0.0\n"
    )
    visits = pl.read_parquet(wd / "data" / "mimic3" / "visits.parquet")
    # 25 copies under new ids: ~1,500 patients, several record batches of 1,024 rows (2 × batch_size, at
    # least 1,024), row groups of 500 rows; one unseen diagnosis code in every copy of a visit
    copies = [
        visits.with_columns(
            pl.col("subject_id") + k * 100_000,
            pl.col("hadm_id") + k * 10_000_000,
            pl.when(pl.col("visit_no") == 1)
            .then(pl.col("diagnoses").list.concat(pl.lit(["D9:999"])))
            .otherwise(pl.col("diagnoses"))
            .alias("diagnoses"),
        )
        for k in range(25)
    ]
    pl.concat(copies).write_parquet(wd / "big.parquet", row_group_size=500)
    old = Path.cwd()
    try:
        os.chdir(wd)
        r = runner.invoke(app, ["train", "student", "-q"])
        assert r.exit_code == 0, r.output
    finally:
        os.chdir(old)
    return wd


def _expected(wd: Path, visits: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    run = load_run(wd / "runs" / "student")
    model, enc = run.module, run.encoder
    samples = samples_from_frame(visits, enc.profile_fields, max_visits=10)
    rows = []
    with torch.inference_mode():
        for b in batches(enc.encode_all(samples), 64, enc.collate):
            top = torch.topk(torch.sigmoid(model(b).logits), TOP_K, dim=1)
            for i in range(len(b["subject_id"])):
                for r in range(TOP_K):
                    rows.append(
                        (
                            int(b["subject_id"][i]),
                            int(b["hadm_id"][i]),
                            r + 1,
                            enc.vocab.medications.codes[int(top.indices[i, r])],
                            float(top.values[i, r]),
                        )
                    )
    df = pl.DataFrame(rows, schema=["subject_id", "hadm_id", "rank", "atc3", "score"], orient="row")
    return df, enc.unknown.codes


def test_streamed_output_equals_training_path(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    r = runner.invoke(app, ["predict", "big.parquet", "-o", "out.csv", "--top-k", str(TOP_K)])
    assert r.exit_code == 0, r.output
    full = pl.read_csv("out.csv")
    # every selected drug is written, also below the top k; the rest are the top k of each patient
    beyond = full.filter(pl.col("rank") > TOP_K)
    assert beyond["selected"].all()
    m = re.search(r"([\d,]+) selected drugs ranked below --top-k", r.output)
    assert (m and int(m.group(1).replace(",", "")) == beyond.height) or beyond.height == 0
    got = full.filter(pl.col("rank") <= TOP_K).drop("ddi_dropped", "n_unknown_codes", "selected")
    want, unknown = _expected(workdir, pl.read_parquet("big.parquet"))
    assert got.height == want.height == TOP_K * 1500
    assert got.select("subject_id", "hadm_id", "rank", "atc3").equals(want.drop("score"))
    assert (got["score"] - want["score"]).abs().max() < 1e-5
    # the unknown-code line counts what the training path's encoder counts (25 × the visits with visit_no 1
    # whose patient keeps them in the window)
    m = re.search(r"unknown codes: ([\d,]+) diagnoses", r.output)
    assert m and int(m.group(1).replace(",", "")) == unknown["diagnoses"] > 0


def test_same_output_whatever_the_batch_size(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert runner.invoke(app, ["predict", "big.parquet", "-o", "a.parquet", "-q"]).exit_code == 0
    monkeypatch.setenv("LEADER_PREDICT__BATCH_SIZE", "100000")
    assert runner.invoke(app, ["predict", "big.parquet", "-o", "b.parquet", "-q"]).exit_code == 0
    a, b = pl.read_parquet("a.parquet"), pl.read_parquet("b.parquet")
    assert a.drop("score").equals(b.drop("score"))
    assert np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max() < 1e-5


def test_rows_of_a_subject_far_apart_are_refused(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    big = pl.read_parquet("big.parquet").with_row_index("i")
    multi = big.group_by("subject_id").len().filter(pl.col("len") > 1)["subject_id"]
    sid = big.filter(pl.col("subject_id").is_in(multi.implode()))["subject_id"][0]  # an early multi-visit one
    later = (pl.col("subject_id") == sid) & (pl.col("i") > big.filter(pl.col("subject_id") == sid)["i"].min())
    moved = pl.concat([big.filter(~later), big.filter(later)]).drop("i")  # its later visits at the very end
    moved.write_parquet("split.parquet")
    r = runner.invoke(app, ["predict", "split.parquet", "-o", "split.csv"])
    assert r.exit_code == 2
    assert "not contiguous" in r.output and "split.parquet" in r.output
    assert not Path("split.csv").exists() and not list(Path(".").glob(".split.csv*"))


def test_empty_subject_id_is_refused(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    small = pl.read_parquet("data/mimic3/visits.parquet")
    small.with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise(pl.col("subject_id")).alias("subject_id")
    ).write_parquet("nulls.parquet")
    r = runner.invoke(app, ["predict", "nulls.parquet", "-o", "nulls.csv"])
    assert r.exit_code == 2
    assert "column 'subject_id' has 1 empty values" in r.output
    assert not Path("nulls.csv").exists()


def test_top_equals_topk_and_orders_equal_scores_by_column():
    from leadercli.predict.ranking import top

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(500, 40, generator=g)
    values, indices = top(probs, 12)
    want = torch.topk(probs, 12, dim=1)
    assert torch.equal(indices, want.indices) and torch.equal(values, want.values)
    tied = torch.tensor([[0.2, 0.9, 0.5, 0.9, 0.5, 0.1]])
    values, indices = top(tied, 4)
    assert indices.tolist() == [[1, 3, 2, 4]] and values[0].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5])


def test_subject_chunks_carry_the_last_subject():
    from leadercli.predict.streaming import subject_chunks

    frames = [pl.DataFrame({"subject_id": [1, 1, 2, 3, 3]}), pl.DataFrame({"subject_id": [3, 4, 4]})]
    out = [(n, df["subject_id"].to_list()) for n, df in subject_chunks(iter(frames))]
    assert out == [(5, [1, 1, 2]), (3, [3, 3, 3]), (0, [4, 4])]
    # the last subject also earlier in the frame: all its rows are carried over, as before
    frames = [pl.DataFrame({"subject_id": [3, 1, 3]}), pl.DataFrame({"subject_id": [5]})]
    out = [(n, df["subject_id"].to_list()) for n, df in subject_chunks(iter(frames))]
    assert out == [(3, [1]), (1, [3, 3]), (0, [5])]
