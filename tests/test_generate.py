"""benchmarks/generate.py: synthetic raw MIMIC tables and visits files, at tiny sizes."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_generate():
    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "benchmarks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_generate"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


G = _load_generate()

M3_FILES = [
    "PATIENTS",
    "ADMISSIONS",
    "DIAGNOSES_ICD",
    "PROCEDURES_ICD",
    "PRESCRIPTIONS",
    "D_ICD_DIAGNOSES",
    "D_ICD_PROCEDURES",
]


def _read(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, infer_schema=False)
    return df.rename({c: c.lower() for c in df.columns})


def _tables(folder: Path, layout: str, gz: bool) -> dict[str, pl.DataFrame]:
    lay = G.LAYOUTS[layout]
    return {role: _read(folder / lay.file_name(role, gz)) for role in G.ROLES}


@pytest.fixture(scope="module")
def m4(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("m4")
    return out, G.generate_raw("mimic4", 50, out, seed=7)


@pytest.fixture(scope="module")
def m3_upper_gz(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("m3")
    return out, G.generate_raw("mimic3", 50, out, gzip=True, upper_headers=True, seed=7)


def test_visit_count_distribution():
    p = G.visit_count_probs(1.43)
    k = np.arange(1, p.size + 1)
    assert p.size == 20
    assert p.sum() == pytest.approx(1.0)
    assert (p * k).sum() == pytest.approx(1.43)
    assert p[0] > 0.5  # most patients have a single visit
    assert np.all(np.diff(p[1:]) < 0)  # the tail decreases
    assert p[2] / p[1] == pytest.approx((3 / 2) ** -G.TAIL_EXPONENT)
    assert G.visit_count_probs(1.0)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        G.visit_count_probs(0.5)


def test_clusters_separate_obvious_groups():
    # rows 0-2 share tokens {0,1}, rows 3-5 share {2,3}: two clusters, whatever the seed
    x = np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=float
    )
    for seed in range(5):
        labels = G.cluster_admissions(x, 2, np.random.default_rng(seed))
        assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]


@pytest.mark.parametrize("fixture", ["m4", "m3_upper_gz"])
def test_rows_belong_to_generated_admissions(fixture, request):
    out, counts = request.getfixturevalue(fixture)
    layout, gz = ("mimic4", False) if fixture == "m4" else ("mimic3", True)
    t = _tables(out, layout, gz)
    assert counts["patients"] == t["patients"].height == 50
    assert counts["admissions"] == t["admissions"].height >= 50
    adm = t["admissions"].select("subject_id", "hadm_id")
    assert adm["hadm_id"].n_unique() == adm.height
    assert set(adm["subject_id"]) == set(t["patients"]["subject_id"])
    for role in G.EVENT_ROLES:
        ev = t[role]
        assert counts[role] == ev.height > 0
        joined = ev.select("subject_id", "hadm_id").join(adm, on="hadm_id", how="left", suffix="_adm")
        assert joined["subject_id_adm"].null_count() == 0  # every row belongs to a generated admission
        assert (joined["subject_id"] == joined["subject_id_adm"]).all()  # ... of the same patient
        if "row_id" in ev.columns:
            assert ev["row_id"].cast(pl.Int64).to_list() == list(range(1, ev.height + 1))


@pytest.mark.parametrize("fixture", ["m4", "m3_upper_gz"])
def test_admit_times_increase_per_patient(fixture, request):
    out, _ = request.getfixturevalue(fixture)
    layout, gz = ("mimic4", False) if fixture == "m4" else ("mimic3", True)
    adm = _tables(out, layout, gz)["admissions"].with_columns(
        pl.col("admittime", "dischtime").str.to_datetime("%Y-%m-%d %H:%M:%S")
    )
    assert (adm["dischtime"] > adm["admittime"]).all()
    per = adm.group_by("subject_id", maintain_order=True).agg(
        pl.col("admittime"), pl.col("dischtime").shift(1).alias("prev_disch")
    )
    for admits, prev in zip(per["admittime"].to_list(), per["prev_disch"].to_list(), strict=True):
        assert admits == sorted(admits) and len(set(admits)) == len(admits)
        assert all(
            a > d for a, d in zip(admits[1:], prev[1:], strict=True)
        )  # admitted after the last discharge


def test_mimic3_upper_headers_gzip_layout(m3_upper_gz):
    out, counts = m3_upper_gz
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".gz") == sorted(
        f"{n}.csv.gz" for n in M3_FILES
    )
    with gzip.open(out / "PRESCRIPTIONS.csv.gz", "rt") as fh:
        header = fh.readline().strip().split(",")
        rows = sum(1 for _ in fh)
    assert header[:3] == ["ROW_ID", "SUBJECT_ID", "HADM_ID"] and "NDC" in header
    assert rows >= counts["prescriptions"]  # ≥: a quoted field may span lines
    with gzip.open(out / "D_ICD_DIAGNOSES.csv.gz", "rt") as fh:
        assert fh.readline().strip() == "ROW_ID,ICD9_CODE,SHORT_TITLE,LONG_TITLE"
    codes = _read(out / "DIAGNOSES_ICD.csv.gz")["icd9_code"]
    demo = _read(REPO / "sample_data" / "mimic-iii-demo" / "DIAGNOSES_ICD.csv")["icd9_code"]
    assert set(codes.drop_nulls()) <= set(demo.drop_nulls())  # strings, leading zeros kept
    pat = _read(out / "PATIENTS.csv.gz")
    assert set(pat.columns) == {
        "row_id",
        "subject_id",
        "gender",
        "dob",
        "dod",
        "dod_hosp",
        "dod_ssn",
        "expire_flag",
    }


def test_mimic4_dictionaries_copied_as_they_are(tmp_path):
    G.generate_raw("mimic4", 5, tmp_path, gzip=True, seed=1)
    demo = REPO / "sample_data" / "mimic-iv-demo" / "hosp"
    for name in ("d_icd_diagnoses.csv.gz", "d_icd_procedures.csv.gz"):
        assert (tmp_path / name).read_bytes() == (demo / name).read_bytes()


def test_deterministic_and_independent_of_format(tmp_path, m3_upper_gz):
    out_gz, _ = m3_upper_gz
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    G.generate_raw("mimic3", 50, a, seed=7)
    G.generate_raw("mimic3", 50, b, seed=7)
    G.generate_raw("mimic3", 50, c, seed=8)
    for name in M3_FILES[:5]:
        assert (a / f"{name}.csv").read_bytes() == (b / f"{name}.csv").read_bytes()
        # same seed, gzip + upper-case headers: the same rows
        assert _read(a / f"{name}.csv").equals(_read(out_gz / f"{name}.csv.gz"))
    assert (a / "ADMISSIONS.csv").read_bytes() != (c / "ADMISSIONS.csv").read_bytes()


def test_full_keep_copies_whole_demo_admissions(tmp_path):
    """With every keep at 1, each new admission's diagnosis list is exactly one demo admission's list."""
    counts = G.generate_raw("mimic4", 30, tmp_path, seed=3, rx_keep=1.0, dx_keep=1.0, px_keep=1.0)
    demo = _read(REPO / "sample_data" / "mimic-iv-demo" / "hosp" / "diagnoses_icd.csv.gz")

    def signatures(df: pl.DataFrame) -> set[tuple]:
        g = df.sort("seq_num", "icd_code").group_by("hadm_id").agg(pl.col("icd_code"), pl.col("seq_num"))
        return {
            (tuple(c), tuple(s)) for c, s in zip(g["icd_code"].to_list(), g["seq_num"].to_list(), strict=True)
        }

    gen = _read(tmp_path / "diagnoses_icd.csv")
    assert signatures(gen) <= signatures(demo)
    assert gen["hadm_id"].n_unique() == counts["admissions"]  # every demo admission has diagnoses
    assert G.default_keep(G.load_demo(G.LAYOUTS["mimic4"]), "prescriptions") == pytest.approx(
        (15_000_000 / 430_000) / (18087 / 275)
    )


def test_profile_mostly_constant_across_admissions(tmp_path):
    G.generate_raw("mimic4", 400, tmp_path, seed=11, rx_keep=0.1)
    adm = _read(tmp_path / "admissions.csv")
    per = adm.group_by("subject_id").agg(pl.len().alias("n"), pl.col("insurance", "race").n_unique())
    multi = per.filter(pl.col("n") > 1)
    assert multi.height > 20
    assert (multi["insurance"] == 1).mean() > 0.75 and (multi["race"] == 1).mean() > 0.75
    assert 1.2 < adm.height / 400 < 1.7  # mean admissions per patient ≈ 1.43


def test_main_cli_raw(tmp_path, capsys):
    assert G.main(["raw", "--layout", "mimic4", "--patients", "5", "--out", str(tmp_path), "--gzip"]) == 0
    assert "| admissions |" in capsys.readouterr().out
    assert _read(tmp_path / "patients.csv.gz").height == 5


def test_generate_visits(tiny_artifact, tmp_path):
    src = pl.read_parquet(tiny_artifact / "visits.parquet")
    out = tmp_path / "v.parquet"
    rows = G.generate_visits(tiny_artifact / "visits.parquet", 250, out, seed=5, chunk_patients=100)
    got = pl.read_parquet(out)
    assert got.height == rows
    assert got.schema == src.schema
    assert got["subject_id"].n_unique() == 250 and got["subject_id"].min() == 1
    assert got["hadm_id"].n_unique() == rows
    assert pq.ParquetFile(out).metadata.num_row_groups == 3  # one row group per chunk of 100 patients
    # each new patient is a copy of one source patient: same number of visits and the same code lists
    src_sets = {
        tuple(map(tuple, g["diagnoses"].to_list())) for _, g in src.sort("visit_no").group_by("subject_id")
    }
    for _, g in got.sort("visit_no").group_by("subject_id"):
        assert g["visit_no"].to_list() == list(range(g.height))
        assert tuple(map(tuple, g["diagnoses"].to_list())) in src_sets
    again = tmp_path / "w.parquet"
    G.generate_visits(tiny_artifact / "visits.parquet", 250, again, seed=5, chunk_patients=100)
    assert pl.read_parquet(again).equals(got)


@pytest.mark.parametrize("layout, folder", [("mimic3", "mimic-iii-demo"), ("mimic4", "mimic-iv-demo/hosp")])
def test_split_demo_holds_out_whole_subjects(tmp_path, layout, folder):
    """bench_coldstart.split_demo (the cold-start populations of both demos): every subject in exactly one part,
    the code-title tables whole in both, no non-table files, and the training part feeds generate_raw."""
    spec = importlib.util.spec_from_file_location(
        "bench_coldstart", REPO / "benchmarks" / "bench_coldstart.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    train, held, held_ids = bench.split_demo(tmp_path, 11, 0.6, layout)
    src = REPO / "sample_data" / folder
    adm = next(f for f in src.iterdir() if f.name.lower().startswith("admissions.csv"))
    everyone = set(_read(adm)["subject_id"].cast(pl.Int64).to_list())
    parts = {}
    for name, root in (("train", train), ("held", held)):
        files = sorted(p.name for p in (root / folder).iterdir())
        assert all(".csv" in f for f in files)  # LICENSE.txt, SHA256SUMS.txt left out
        a = next(root / folder / f for f in files if f.lower().startswith("admissions"))
        parts[name] = set(_read(a)["subject_id"].cast(pl.Int64).to_list())
        d_icd = next(f for f in files if f.lower().startswith("d_icd_diagnoses"))
        whole = next(f for f in src.iterdir() if f.name.lower().startswith("d_icd_diagnoses"))
        assert _read(root / folder / d_icd).height == _read(whole).height
    assert parts["train"].isdisjoint(parts["held"])
    assert parts["train"] | parts["held"] == everyone
    assert sorted(parts["held"]) == held_ids and len(held_ids) == round(0.4 * len(everyone))
    if layout == "mimic3":
        out = tmp_path / "raw"
        G.generate_raw("mimic3", 30, out, seed=1, demo_root=train)
        rx = _read(out / "PRESCRIPTIONS.csv")
        assert rx.height > 0
