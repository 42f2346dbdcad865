"""MEDS as the public MIMIC-IV MEDS ETL writes it (issue 23): default settings give the `--source mimic4` cohort.

The fixture is written by hand by `tests/meds_etl.py` to the conventions of `mimic-iv-meds` 0.2.0 (its
`event_configs.yaml`), not by the package itself, whose spec needs tables the bundled demo lacks: drug events
`MEDICATION//START//<drug>//<ndc>` and `MEDICATION//STOP//…` without `hadm_id`, NDCs read as integers (leading
zeros lost, so 7- to 10-digit NDCs), diagnoses at discharge time in code order (not `seq_num` order), shards
under `data/{train,tuning,held_out}/`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from meds_etl import write_etl_meds
from typer.testing import CliRunner

from leadercli.cli.main import app
from leadercli.data import meds_events

runner = CliRunner()
HOSP = Path(__file__).resolve().parents[2] / "sample_data" / "mimic-iv-demo" / "hosp"
KEYS = ["subject_id", "hadm_id"]


def _run(wd: Path, *args: str):
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        return runner.invoke(app, list(args))
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def wd(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("etl")
    write_etl_meds(HOSP, wd / "etl")
    for args in (
        ("preprocess", "-q", "--source", "mimic4", "--out", "data/m4"),
        ("preprocess", "-q", "--source", "meds", "--raw", "etl", "--out", "data/etl"),
    ):
        r = _run(wd, *args)
        assert r.exit_code == 0, r.output
    return wd


def _pairs(visits: pl.DataFrame) -> pl.DataFrame:
    return visits.select(*KEYS, "medications").explode("medications").drop_nulls()


def test_fixture_follows_the_etl(wd):
    import meds
    import pyarrow.parquet as pq

    names = sorted(p.relative_to(wd / "etl").as_posix() for p in (wd / "etl" / "data").rglob("*.parquet"))
    assert names == ["data/held_out/0.parquet", "data/train/0.parquet", "data/tuning/0.parquet"]
    ev = pl.concat([pl.read_parquet(wd / "etl" / n) for n in names])
    for n in names:
        meds.DataSchema.validate(pq.read_table(wd / "etl" / n))
    drugs = ev.filter(pl.col("code").str.starts_with("MEDICATION//"))
    assert drugs["hadm_id"].null_count() == drugs.height  # no visit id on drug events
    assert drugs.filter(pl.col("code").str.starts_with("MEDICATION//STOP//")).height > 0
    ndc = drugs["code"].str.extract(r"//(\d+)$")
    assert ndc.str.len_chars().min() == 7  # integers: leading zeros lost
    dx = ev.filter(pl.col("code").str.starts_with("DIAGNOSIS//")).group_by(KEYS, maintain_order=True)
    mimic = pl.read_csv(HOSP / "diagnoses_icd.csv.gz", infer_schema=False).with_columns(
        pl.col("subject_id", "hadm_id", "seq_num").cast(pl.Int64)
    )
    first = mimic.filter(pl.col("seq_num") == 1).select(
        *KEYS, pl.format("DIAGNOSIS//ICD//{}//{}", "icd_version", "icd_code").alias("first")
    )
    got = dx.agg(pl.col("code").first()).join(first, on=KEYS)
    assert (got["code"] != got["first"]).sum() > got.height // 2  # not seq_num order


def test_default_settings_give_the_mimic4_cohort(wd):
    """Same patients and visits (and visit ids), the label count within 1, ≥ 95 % of the visit-drug pairs and
    none invented."""
    a = pl.read_parquet(wd / "data/m4/visits.parquet")
    b = pl.read_parquet(wd / "data/etl/visits.parquet")
    assert a.select(KEYS).sort(KEYS).equals(b.select(KEYS).sort(KEYS))
    assert a.height == 181 and a["subject_id"].n_unique() == 90
    va, vb = (json.loads((wd / f"data/{d}/vocab.json").read_text()) for d in ("m4", "etl"))
    assert abs(len(va["medications"]["codes"]) - len(vb["medications"]["codes"])) <= 1
    pa, pb = _pairs(a), _pairs(b)
    shared = pa.join(pb, on=[*KEYS, "medications"]).height
    assert shared >= 0.95 * pa.height
    assert pb.height - shared <= 0.01 * pa.height
    m = json.loads((wd / "data/etl/manifest.json").read_text())
    assert m["tables"]["visits"]["drug_events_in_visits"] > 0.8 * m["tables"]["visits"]["drug_events"]
    assert m["meds"]["medication_ndc"]  # the patterns are recorded for --for-run


@pytest.mark.parametrize(
    "ndc, want",
    [
        ("1234567", "00001234567"),  # 7 digits: four zeros lost
        ("409490000", "00409490000"),
        ("00409490000", "00409490000"),
        ("0409-4900-00", "00409490000"),
        ("409-4900-0", "00409490000"),
        ("12345678901", "12345678901"),
    ],
)
def test_every_ndc_spelling_maps(ndc, want):
    from leadercli.data.mapping import normalise_ndc
    from leadercli.settings import MedsSettings

    codes = pl.DataFrame({"code": [f"MEDICATION//START//Drug name 5 mg//{ndc}"], "n": [1]})
    got = meds_events.classify_codes(codes, MedsSettings())
    assert got["kind"].to_list() == ["ndc"]
    assert pl.select(normalise_ndc(pl.lit(got["value"][0]))).item() == want


def _events(rows) -> pl.DataFrame:
    """(subject, time or None, code, hadm_id or None) → the matched-event frame `assign_visits` reads."""
    df = pl.DataFrame(
        [(s, datetime.fromisoformat(t) if t else None, k, h) for s, t, k, h in rows],
        schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "kind": pl.String, "hadm_id": pl.Int64},
        orient="row",
    )
    return df.with_row_index("row").with_columns(pl.lit("x").alias("value"))


def _visits(rows) -> list:
    parts = meds_events.Parts()
    out = meds_events.assign_visits(_events(rows), parts)
    return out.sort("row")["hadm_id"].to_list()


def test_events_without_id_go_to_the_window_that_holds_them():
    got = _visits(
        [
            (1, "2150-01-01 10:00", "admission", 7),
            (1, "2150-01-01 09:00", "ndc", None),  # before the admission: no visit
            (1, "2150-01-02 10:00", "ndc", None),  # inside 7
            (1, "2150-01-03 10:00", "discharge", 7),
            (1, "2150-01-03 10:00", "ndc", None),  # at the discharge instant: 7
            (1, "2150-02-01 10:00", "admission", 9),
            (1, "2150-02-01 10:00", "discharge", 9),  # zero-length window
            (1, "2150-02-01 10:00", "ndc", None),  # at that instant: 9
            (1, "2150-02-01 10:01", "ndc", None),  # after it: none
            (1, None, "gender", None),  # static
        ]
    )
    assert got == [7, None, 7, 7, 7, 9, 9, 9, None, None]


def test_overlapping_windows_and_subjects_without_ids():
    got = _visits(
        [
            (1, "2150-01-01", "admission", 1),
            (1, "2150-01-10", "discharge", 1),
            (1, "2150-01-03", "admission", 2),  # nested in visit 1
            (1, "2150-01-04", "discharge", 2),
            (1, "2150-01-03 12:00", "ndc", None),  # both hold it: the latest admission
            (1, "2150-01-08", "ndc", None),  # only the outer one
            (2, "2150-01-01", "admission", None),  # subject 2 has no ids: admission → discharge windows
            (2, "2150-01-02", "ndc", None),
            (2, "2150-01-03", "discharge", None),
            (2, "2150-01-05", "admission", None),
            (2, "2150-01-06", "ndc", None),  # open last window
        ]
    )
    assert got == [1, 1, 2, 2, 2, 1, 2000, 2000, 2000, 2001, 2001]


def test_streaming_groups_give_the_same_artifact(wd, monkeypatch, tmp_path):
    """Small groups (one subject range at a time) and a subject split over two shards give the same artifact."""
    import shutil

    root = tmp_path / "etl"
    shutil.copytree(wd / "etl", root)
    shard = root / "data/train/0.parquet"
    ev = pl.read_parquet(shard)
    moved = ev["subject_id"].unique().sort()[3]
    ev.filter(pl.col("subject_id") != moved).write_parquet(shard)
    half = ev.filter(pl.col("subject_id") == moved)
    half.head(half.height // 2).write_parquet(root / "data/train/1.parquet")
    half.tail(half.height - half.height // 2).write_parquet(root / "data/held_out/1.parquet")
    monkeypatch.setattr(meds_events, "GROUP_EVENTS", 2_000)
    r = _run(wd, "preprocess", "-q", "--source", "meds", "--raw", str(root), "--out", str(tmp_path / "art"))
    assert r.exit_code == 0, r.output
    for name in ("visits.parquet", "patients.parquet", "ddi.parquet"):
        assert pl.read_parquet(tmp_path / "art" / name).equals(pl.read_parquet(wd / "data/etl" / name)), name


def test_groups_keep_a_subject_together():
    shards = [meds_events.Shard(Path(f"{i}.parquet"), f"data/{i}.parquet", {}, 10) for i in range(3)]
    subjects = pl.DataFrame(
        {"subject_id": [1, 2, 3, 3, 4], "rows": [5, 5, 5, 5, 10], "shard": [0, 0, 1, 2, 2]},
        schema={"subject_id": pl.Int64, "rows": pl.UInt32, "shard": pl.Int64},
    )
    groups = meds_events._groups(shards, subjects, {0: 10, 1: 5, 2: 15})
    together = [sorted(s.name for s in g.shards) for g in groups]
    assert any({"data/1.parquet", "data/2.parquet"} <= set(t) for t in together)


def test_no_drug_inside_a_visit_says_so(wd, tmp_path):
    """Drug events all outside the visits: the message says that, with counts and the settings to check."""
    import shutil

    root = tmp_path / "etl"
    shutil.copytree(wd / "etl", root)
    for shard in (root / "data").rglob("*.parquet"):
        ev = pl.read_parquet(shard)
        drug = pl.col("code").str.starts_with("MEDICATION//")
        ev.with_columns(
            pl.when(drug).then(pl.col("time").dt.offset_by("-40y")).otherwise("time").alias("time")
        ).write_parquet(shard)
    r = _run(wd, "preprocess", "--source", "meds", "--raw", str(root), "--out", str(tmp_path / "x"))
    assert r.exit_code == 2, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("error:"))
    assert "no drug event falls inside any visit" in line and "drug events read" in line
    assert "meds.visit_column" in r.output and "meds.medication_ndc" in r.output
    assert not (tmp_path / "x").exists()


def _renamed(src: Path, dst: Path, old: str, new: str, keep=None) -> Path:
    """A copy of the MEDS root `src` with code prefix `old` renamed `new` (another ETL's vocabulary); `keep`
    filters the events."""
    import shutil

    shutil.copytree(src, dst)
    for shard in (dst / "data").rglob("*.parquet"):
        ev = pl.read_parquet(shard)
        ev = ev.with_columns(pl.col("code").str.replace(f"^{old}", new))
        (ev.filter(keep) if keep is not None else ev).write_parquet(shard)
    return dst


@pytest.fixture(scope="module")
def rx_run(wd) -> Path:
    """A run trained on MEDS whose drugs are coded RX//…//<ndc>, with its [meds] pattern in its folder's
    leader.toml."""
    team = wd / "team"
    team.mkdir()
    _renamed(wd / "etl", team / "rx", "MEDICATION//", "RX//")
    (team / "leader.toml").write_text("[meds]\nmedication_ndc = '^RX//(?:.*//)?(?P<ndc>\\d[^/]*)$'\n")
    for args in (
        ("preprocess", "-q", "--source", "meds", "--raw", "rx", "--out", "data/rx"),
        ("train", "student", "-q", "--data", "data/rx", "--model", "popularity", "--out", "runs/pop"),
    ):
        r = _run(team, *args)
        assert r.exit_code == 0, r.output
    return team / "runs/pop"


def test_for_run_uses_the_runs_meds_rules(wd, rx_run, tmp_path):
    """From a folder without the run's leader.toml, --for-run still reads the drugs (the run's pattern), and
    says in one line that the current settings differ."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    r = _run(
        other, "preprocess", "--for-run", str(rx_run), "--raw", str(rx_run.parents[1] / "rx"), "--out", "new"
    )
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "settings the run was built with" in line]
    assert len(notes) == 1 and "meds.medication_ndc" in notes[0]
    visits = pl.read_parquet(other / "new/visits.parquet")
    history = visits.filter(pl.col("visit_no") < pl.col("visit_no").max().over("subject_id"))
    assert history.height and (history["medications"].list.len() > 0).mean() > 0.8
    assert "warning" not in r.output


def test_for_run_warns_when_no_history_has_a_drug(wd, rx_run, tmp_path):
    """New patients whose histories have no drug event at all: exit 0, a warning on stderr with the counts."""
    root = _renamed(
        wd / "etl", tmp_path / "nodrugs", "MEDICATION//", "RX//", ~pl.col("code").str.starts_with("RX//")
    )
    r = _run(tmp_path, "preprocess", "-q", "--for-run", str(rx_run), "--raw", str(root), "--out", "new")
    assert r.exit_code == 0, r.output
    warning = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "history visits" in warning[0] and "0 drug rows read" in warning[0]


def test_for_run_refuses_a_run_of_another_source(wd, tmp_path):
    """A MIMIC-III run cannot read MEDS / MIMIC-IV patients (other codes and profile fields)."""
    r = _run(wd, "preprocess", "-q", "--source", "mimic3", "--out", "data/m3")
    assert r.exit_code == 0, r.output
    r = _run(wd, "train", "student", "-q", "--data", "data/m3", "--model", "popularity", "--out", "runs/m3")
    assert r.exit_code == 0, r.output
    r = _run(
        wd,
        "preprocess",
        "--for-run",
        "runs/m3",
        "--source",
        "meds",
        "--raw",
        "etl",
        "--out",
        str(tmp_path / "x"),
    )
    assert r.exit_code == 2 and "trained on mimic3 data" in r.output, r.output
    assert not (tmp_path / "x").exists()
