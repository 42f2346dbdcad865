"""Synthetic MIMIC-format data at any size, for the speed and memory benchmarks.

Owns: the raw-table generator behind `benchmarks/bench_preprocess.py` (issue 2, "Speed and memory") and the
visits-file generator behind `benchmarks/bench_predict.py` (issue 3, "Speed"). The raw layouts follow
DESIGN §2 / leader-reference §1 (MIMIC-III v1.4 and MIMIC-IV v2.x `hosp/` tables); the visits file follows
the artifact contract of `leadercli/data/artifact.py` (DESIGN §3).

How to run (the first line is CPU-sized, a few seconds):

    python benchmarks/generate.py raw --layout mimic3 --patients 1000 --out /tmp/m3small
    python benchmarks/generate.py raw --layout mimic4 --patients 300000 --out /tmp/m4big --gzip
    python benchmarks/generate.py raw --layout mimic3 --patients 50000 --out /tmp/m3up --upper-headers --gzip
    python benchmarks/generate.py visits --from data/mimic3/visits.parquet --patients 1000000 --out /tmp/v1m.parquet

`raw` resamples the bundled demo's admissions into new patients:

- each new patient gets k admissions (P(k=1) large, a power-law tail up to 20; mean 1.43 for mimic4, the
  ratio of the ≈430k admissions to ≈300k patients the issue asks for; 1.27 for mimic3, 58,976 / 46,520);
- the patient takes its profile (insurance, language, marital status, race/ethnicity, religion, gender, age)
  from one demo admission (its "profile source"), and keeps it across its admissions except for a few
  per-field changes (`PROFILE_NOISE`);
- demo admissions are clustered (seeded spherical k-means on multi-hot diagnosis + NDC vectors); the patient's
  home cluster is the profile source's cluster with probability `HOME_FROM_PROFILE`, else a random one, and
  each admission resamples a demo admission of the home cluster with probability `IN_CLUSTER`, else any demo
  admission. This gives patient-level structure: history and profile predict the drugs, but not exactly;
- each resampled admission copies its diagnosis, procedure and prescription rows (new subject_id / hadm_id,
  times shifted with the admission), keeping each row with probability dx/px/rx-keep; the defaults bring the
  rows per admission to the full database's scale (MIMIC-IV: 4.7M / 0.7M / 15M rows for 430k admissions,
  so ≈10.9 / 1.6 / 34.9 per admission; MIMIC-III: 651k / 240k / 4.16M for 59k admissions);
- admit times increase per patient (gaps of an exponential number of days after the previous discharge);
  hadm_ids are unique random numbers, ascending with admit time for 70 % of the patients and in random order
  for the others, so hadm_id order differs from admit-time order for about a fifth of multi-visit patients;
- deathtime / hospital_expire_flag are kept only on a patient's last admission; dod columns are left empty.
  The D_ICD dictionaries are copied (header case and compression adapted; bytes as they are otherwise).

Everything is seeded (`--seed`) and deterministic; the output does not depend on --gzip / --upper-headers.
Rows are produced in chunks of admissions, so memory stays bounded at any size.
"""

from __future__ import annotations

import argparse
import gzip as gzip_mod
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]

EVENT_ROLES = ("diagnoses_icd", "procedures_icd", "prescriptions")
DICT_ROLES = ("d_icd_diagnoses", "d_icd_procedures")
ROLES = ("patients", "admissions", *EVENT_ROLES, *DICT_ROLES)

# columns holding timestamps (MIMIC-III and MIMIC-IV names); they move with their admission
TIME_COLUMNS = frozenset(
    {
        "admittime",
        "dischtime",
        "deathtime",
        "edregtime",
        "edouttime",
        "startdate",
        "enddate",
        "starttime",
        "stoptime",
    }
    | {"chartdate"}
)
PROFILE_COLUMNS = ("insurance", "language", "religion", "marital_status", "ethnicity", "race")

MAX_VISITS = 20  # longest patient history generated (the MIMIC-IV demo's longest is 20)
TAIL_EXPONENT = 2.5  # P(k) ∝ k^-2.5 for k = 2..MAX_VISITS
HOME_FROM_PROFILE = 0.7  # P(home cluster = the profile source's cluster)
IN_CLUSTER = 0.8  # P(an admission is resampled from the home cluster)
HADM_IN_TIME_ORDER = 0.7  # P(a patient's hadm_ids ascend with admit time); the others are in random order
PROFILE_NOISE = 0.05  # P(a profile field of an admission is taken from the resampled admission instead)
MEAN_GAP_DAYS = 200.0  # mean days between a discharge and the next admission
CHUNK_ADMISSIONS = 20_000  # admissions per written chunk (bounds memory)
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Layout:
    """What differs between the MIMIC-III and MIMIC-IV raw layouts."""

    name: str
    demo: str  # folder under sample_data/
    upper_file_names: bool  # MIMIC-III: PATIENTS.csv; MIMIC-IV: patients.csv.gz
    visits_mean: float  # mean admissions per generated patient
    rows_per_admission: dict[str, float]  # target rows per admission of each event table (full database)
    subject_base: int
    hadm_base: int
    first_year: int  # admit times fall in [first_year, last_year) (shifted MIMIC years)
    last_year: int

    def file_name(self, role: str, gz: bool) -> str:
        stem = role.upper() if self.upper_file_names else role
        return f"{stem}.csv.gz" if gz else f"{stem}.csv"


LAYOUTS = {
    "mimic3": Layout(
        name="mimic3",
        demo="mimic-iii-demo",
        upper_file_names=True,
        visits_mean=58_976 / 46_520,
        rows_per_admission={
            "diagnoses_icd": 651_047 / 58_976,
            "procedures_icd": 240_095 / 58_976,
            "prescriptions": 4_156_450 / 58_976,
        },
        subject_base=100_000,
        hadm_base=200_000,
        first_year=2100,
        last_year=2200,
    ),
    "mimic4": Layout(
        name="mimic4",
        demo="mimic-iv-demo/hosp",
        upper_file_names=False,
        visits_mean=1.43,
        rows_per_admission={
            "diagnoses_icd": 4_700_000 / 430_000,
            "procedures_icd": 700_000 / 430_000,
            "prescriptions": 15_000_000 / 430_000,
        },
        subject_base=10_000_000,
        hadm_base=20_000_000,
        first_year=2110,
        last_year=2210,
    ),
}


# ----------------------------------------------------------------------------------------------- demo tables
@dataclass
class EventTable:
    """One demo event table, rows grouped by demo admission (CSR: rows of admission a are start[a]:start[a]+count[a])."""

    frame: pl.DataFrame  # all columns as strings, lower-case names, sorted by admission index
    start: np.ndarray  # (A,) int64
    count: np.ndarray  # (A,) int64
    times: dict[
        str, tuple[pl.Series, str, bool]
    ]  # column -> (epoch seconds i64, strftime format, date-only shift)


@dataclass
class Demo:
    layout: Layout
    folder: Path
    admissions: pl.DataFrame  # all strings, lower-case names
    patients: pl.DataFrame
    admit_s: np.ndarray  # (A,) admit time, epoch seconds
    los_s: np.ndarray  # (A,) length of stay in seconds (≥ 1 hour)
    age_at_admit: (
        np.ndarray
    )  # (A,) age in years at that admission (≥ 300 for MIMIC-III's shifted >89 patients)
    patient_row: np.ndarray  # (A,) row of the admission's patient in `patients`
    events: dict[str, EventTable]
    admission_times: dict[str, tuple[pl.Series, str, bool]]


def demo_folder(layout: Layout, demo_root: Path | None = None) -> Path:
    """The bundled demo: sample_data/ of the repository, else the copy inside the installed package."""
    candidates = [demo_root] if demo_root else [REPO / "sample_data"]
    if demo_root is None:
        try:
            import leadercli

            candidates.append(Path(leadercli.__file__).resolve().parent / "sample_data")
        except ImportError:  # pragma: no cover - the generator also runs without the package
            pass
    for root in candidates:
        folder = Path(root) / layout.demo
        if folder.is_dir():
            return folder
    raise SystemExit(f"error: demo folder {layout.demo} not found under {', '.join(map(str, candidates))}")


def _demo_file(folder: Path, layout: Layout, role: str) -> Path:
    for gz in (False, True):
        path = folder / layout.file_name(role, gz)
        if path.is_file():
            return path
    raise SystemExit(f"error: {layout.file_name(role, False)}[.gz] missing in {folder}")


def _read_strings(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, infer_schema=False)
    return df.rename({c: c.lower() for c in df.columns})


def _time_column(values: pl.Series) -> tuple[pl.Series, str, bool]:
    """Parse a timestamp string column → (epoch seconds, format to write it back, whether it is date-only)."""
    present = values.drop_nulls()
    date_only_text = bool(present.len()) and bool((present.str.len_chars() == 10).all())
    fmt = "%Y-%m-%d" if date_only_text else "%Y-%m-%d %H:%M:%S"
    parsed = values.str.to_datetime(fmt, time_unit="us", strict=True)
    secs = (parsed.dt.epoch("s")).cast(pl.Int64)
    midnight = bool(((secs.drop_nulls() % SECONDS_PER_DAY) == 0).all())
    return secs, fmt, date_only_text or midnight


def load_demo(layout: Layout, demo_root: Path | None = None) -> Demo:
    """Read the demo tables of `layout` as strings and index the event rows by admission."""
    folder = demo_folder(layout, demo_root)
    adm = _read_strings(_demo_file(folder, layout, "admissions"))
    pat = _read_strings(_demo_file(folder, layout, "patients"))
    adm_index = {h: i for i, h in enumerate(adm["hadm_id"].to_list())}
    admission_times = {c: _time_column(adm[c]) for c in adm.columns if c in TIME_COLUMNS}
    admit_s = admission_times["admittime"][0].to_numpy()
    disch = admission_times["dischtime"][0].fill_null(0).to_numpy()
    los_s = np.maximum(disch - admit_s, 3600)

    pat_index = {s: i for i, s in enumerate(pat["subject_id"].to_list())}
    patient_row = np.array([pat_index[s] for s in adm["subject_id"].to_list()], dtype=np.int64)
    if layout.name == "mimic3":
        dob_s = _time_column(pat["dob"])[0].to_numpy()[patient_row]
        age = (admit_s - dob_s) / (365.2425 * SECONDS_PER_DAY)
    else:
        anchor_age = pat["anchor_age"].cast(pl.Float64).to_numpy()[patient_row]
        anchor_year = pat["anchor_year"].cast(pl.Float64).to_numpy()[patient_row]
        admit_year = pl.from_epoch(admission_times["admittime"][0], time_unit="s").dt.year().to_numpy()
        age = anchor_age + (admit_year - anchor_year)

    events: dict[str, EventTable] = {}
    for role in EVENT_ROLES:
        df = _read_strings(_demo_file(folder, layout, role))
        idx = np.array([adm_index.get(h, -1) for h in df["hadm_id"].to_list()], dtype=np.int64)
        keep = idx >= 0  # rows of admissions missing from ADMISSIONS cannot be resampled
        order = np.argsort(idx[keep], kind="stable")
        df = df.filter(pl.Series(keep))[order]
        idx = idx[keep][order]
        count = np.bincount(idx, minlength=adm.height).astype(np.int64)
        start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        times = {c: _time_column(df[c]) for c in df.columns if c in TIME_COLUMNS}
        events[role] = EventTable(df, start, count, times)
    return Demo(layout, folder, adm, pat, admit_s, los_s, age, patient_row, events, admission_times)


# ------------------------------------------------------------------------------------------------ structure
def visit_count_probs(
    mean: float, max_visits: int = MAX_VISITS, exponent: float = TAIL_EXPONENT
) -> np.ndarray:
    """P(k) for k = 1..max_visits: P(1) = q, P(k ≥ 2) ∝ k^-exponent, q chosen so that E[k] = mean."""
    k = np.arange(2, max_visits + 1, dtype=np.float64)
    w = k**-exponent
    tail_mean = float((w * k).sum() / w.sum())
    if not 1.0 <= mean <= tail_mean:
        raise ValueError(f"mean admissions per patient must be in [1, {tail_mean:.2f}]")
    q = (tail_mean - mean) / (tail_mean - 1.0)
    return np.concatenate([[q], (1.0 - q) * w / w.sum()])


def _multi_hot(demo: Demo) -> np.ndarray:
    """(A, V) 0/1 matrix of diagnosis codes and non-zero NDCs shared by at least two demo admissions."""
    n_adm = demo.admissions.height
    tokens: list[tuple[np.ndarray, list[str]]] = []
    dx = demo.events["diagnoses_icd"]
    code_col = "icd_code" if "icd_code" in dx.frame.columns else "icd9_code"
    tokens.append((_row_admission(dx), ("D" + dx.frame[code_col].fill_null("")).to_list()))
    rx = demo.events["prescriptions"]
    ndc = rx.frame["ndc"].fill_null("0")
    tokens.append((_row_admission(rx), ("N" + ndc).to_list()))
    pairs = {
        (int(a), t)
        for adm, toks in tokens
        for a, t in zip(adm, toks, strict=True)
        if t not in ("N0", "N", "D")
    }
    by_token: dict[str, set[int]] = {}
    for a, t in pairs:
        by_token.setdefault(t, set()).add(a)
    vocab = sorted(t for t, s in by_token.items() if len(s) >= 2)
    x = np.zeros((n_adm, len(vocab)), dtype=np.float64)
    col = {t: j for j, t in enumerate(vocab)}
    for a, t in pairs:
        j = col.get(t)
        if j is not None:
            x[a, j] = 1.0
    return x


def _row_admission(table: EventTable) -> np.ndarray:
    return np.repeat(np.arange(table.count.size), table.count)


def cluster_admissions(
    x: np.ndarray, n_clusters: int, rng: np.random.Generator, iters: int = 30
) -> np.ndarray:
    """Seeded spherical k-means (k-means++ init) on the rows of x → (A,) cluster id in 0..n_clusters-1.

    Rows are L2-normalised; an all-zero row is its own point at the origin (joins the nearest centroid).
    Empty clusters are re-seeded with the point farthest from its centroid, so every cluster has members.
    """
    n = x.shape[0]
    n_clusters = max(1, min(n_clusters, n))
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    xn = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)  # (A, V)
    centers = [xn[rng.integers(n)]]
    for _ in range(1, n_clusters):
        d = 1.0 - np.max(xn @ np.stack(centers).T, axis=1)  # (A,) cosine distance to nearest center
        d = np.clip(d, 0, None) + 1e-12
        centers.append(xn[rng.choice(n, p=d / d.sum())])
    c = np.stack(centers)  # (K, V)
    labels = np.zeros(n, dtype=np.int64)
    for it in range(iters):
        sim = xn @ c.T  # (A, K)
        new = np.argmax(sim, axis=1)
        for k in range(n_clusters):
            if not np.any(new == k):
                far = int(np.argmin(sim[np.arange(n), new]))
                new[far] = k
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        for k in range(n_clusters):
            m = xn[labels == k].sum(axis=0)
            nm = np.linalg.norm(m)
            c[k] = m / nm if nm > 0 else m
    return labels


@dataclass
class Plan:
    """Every per-patient and per-admission draw, as flat arrays (admissions sorted by patient, then time)."""

    subject_id: np.ndarray  # (P,) int64
    profile_src: np.ndarray  # (P,) demo admission whose profile the patient takes
    first_admit_s: np.ndarray  # (P,) int64
    age_jitter: np.ndarray  # (P,) int64 years
    patient: np.ndarray  # (N,) patient index of each admission
    src: np.ndarray  # (N,) resampled demo admission
    hadm_id: np.ndarray  # (N,) int64, unique
    admit_s: np.ndarray  # (N,) int64, increasing within a patient
    is_last: np.ndarray  # (N,) bool, last admission of its patient
    profile_noise: np.ndarray  # (N, F) bool, take field f from the resampled admission
    clusters: np.ndarray  # (A,) cluster of each demo admission


def plan_patients(
    demo: Demo,
    patients: int,
    rng: np.random.Generator,
    n_clusters: int | None = None,
    visits_mean: float | None = None,
) -> Plan:
    layout = demo.layout
    n_demo = demo.admissions.height
    probs = visit_count_probs(visits_mean if visits_mean is not None else layout.visits_mean)
    k = rng.choice(np.arange(1, probs.size + 1), size=patients, p=probs).astype(np.int64)  # (P,)
    n = int(k.sum())
    patient = np.repeat(np.arange(patients, dtype=np.int64), k)  # (N,)
    first_of_patient = np.concatenate([[0], np.cumsum(k)[:-1]])  # (P,)
    is_last = np.zeros(n, dtype=bool)
    is_last[np.cumsum(k) - 1] = True

    clusters = cluster_admissions(_multi_hot(demo), n_clusters or int(np.clip(n_demo // 25, 2, 12)), rng)
    order = np.argsort(clusters, kind="stable")  # demo admissions grouped by cluster
    csize = np.bincount(clusters, minlength=clusters.max() + 1)
    cstart = np.concatenate([[0], np.cumsum(csize)[:-1]])

    profile_src = rng.integers(n_demo, size=patients)  # (P,)
    home = np.where(
        rng.random(patients) < HOME_FROM_PROFILE,
        clusters[profile_src],
        clusters[rng.integers(n_demo, size=patients)],
    )  # (P,) — a random admission's cluster, so cluster sizes set the odds and the marginal stays uniform
    hc = home[patient]  # (N,)
    in_cluster = order[cstart[hc] + np.floor(rng.random(n) * csize[hc]).astype(np.int64)]
    src = np.where(rng.random(n) < IN_CLUSTER, in_cluster, rng.integers(n_demo, size=n))  # (N,)

    span = (
        np.datetime64(f"{layout.last_year - 25}-01-01") - np.datetime64(f"{layout.first_year}-01-01")
    ).astype("timedelta64[s]")
    first_admit = np.datetime64(f"{layout.first_year}-01-01", "s").astype(np.int64) + (
        rng.random(patients) * span.astype(np.int64)
    ).astype(np.int64)
    first_admit -= first_admit % 60  # minute resolution, as in MIMIC
    gap = (rng.exponential(MEAN_GAP_DAYS, size=n) * SECONDS_PER_DAY).astype(np.int64) + 3600
    gap -= gap % 60
    step = demo.los_s[src] + gap  # (N,) time from this admission to the next one of the same patient
    step[is_last] = 0
    csum = np.cumsum(step) - step  # exclusive cumulative sum
    admit = first_admit[patient] + csum - csum[first_of_patient][patient]  # (N,)

    ids = layout.hadm_base + rng.permutation(n).astype(np.int64)  # (N,) unique, random
    ascending = ids[np.lexsort((ids, patient))]  # (N,) the same ids, ascending within each patient's block
    hadm_id = np.where((rng.random(patients) < HADM_IN_TIME_ORDER)[patient], ascending, ids)

    return Plan(
        subject_id=layout.subject_base + np.arange(patients, dtype=np.int64),
        profile_src=profile_src,
        first_admit_s=first_admit,
        age_jitter=rng.integers(-3, 4, size=patients),
        patient=patient,
        src=src,
        hadm_id=hadm_id,
        admit_s=admit,
        is_last=is_last,
        profile_noise=rng.random((n, len(PROFILE_COLUMNS))) < PROFILE_NOISE,
        clusters=clusters,
    )


# ----------------------------------------------------------------------------------------------- writing
class CsvSink:
    """Append polars frames to one CSV (optionally gzip: one gzip member per chunk, which every reader accepts)."""

    def __init__(self, path: Path, *, gz: bool, upper_headers: bool, gzip_level: int = 1) -> None:
        self.path, self.gz, self.upper, self.level = path, gz, upper_headers, gzip_level
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.rows = 0

    def write(self, df: pl.DataFrame) -> None:
        if self.upper:
            df = df.rename({c: c.upper() for c in df.columns})
        if self.gz:
            df.write_csv(
                self.fh, include_header=self.rows == 0, compression="gzip", compression_level=self.level
            )
        else:
            df.write_csv(self.fh, include_header=self.rows == 0)
        self.rows += df.height

    def close(self) -> None:
        self.fh.close()


def _fmt_times(secs: pl.Series, fmt: str) -> pl.Series:
    return pl.from_epoch(secs, time_unit="s").dt.strftime(fmt)


def _shifted(
    times: dict[str, tuple[pl.Series, str, bool]], rows: np.ndarray, delta_s: np.ndarray, delta_d: np.ndarray
):
    """Timestamp columns of the gathered rows moved with their admission (date-only columns by whole days)."""
    out = []
    for col, (secs, fmt, date_only) in times.items():
        shift = pl.Series(delta_d * SECONDS_PER_DAY if date_only else delta_s)
        out.append(_fmt_times(secs.gather(rows) + shift, fmt).alias(col))
    return out


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for i in range(0, n, size):
        yield i, min(n, i + size)


def _write_patients(demo: Demo, plan: Plan, sink: CsvSink) -> None:
    pat_rows = demo.patient_row[plan.profile_src]  # (P,)
    df = demo.patients[pat_rows]
    age = demo.age_at_admit[plan.profile_src]
    first = plan.first_admit_s
    cols: list[pl.Series] = [pl.Series("subject_id", plan.subject_id).cast(pl.String)]
    if demo.layout.name == "mimic3":
        shifted = age >= 200  # MIMIC-III moved the dob of patients over 89 to 300 years before admission
        years = np.where(shifted, 300.0, np.clip(np.floor(age) + plan.age_jitter, 0, 89))
        dob = first - ((years * 365.2425 + 30) * SECONDS_PER_DAY).astype(np.int64)
        dob -= dob % SECONDS_PER_DAY
        cols += [
            pl.Series("row_id", np.arange(1, len(first) + 1)).cast(pl.String),
            _fmt_times(pl.Series(dob), "%Y-%m-%d %H:%M:%S").alias("dob"),
            *[
                pl.repeat(None, len(first), dtype=pl.String, eager=True).alias(c)
                for c in ("dod", "dod_hosp", "dod_ssn")
            ],
            pl.repeat("0", len(first), eager=True).alias("expire_flag"),
        ]
    else:
        anchor_age = np.clip(np.floor(age) + plan.age_jitter, 18, 91).astype(np.int64)
        anchor_year = pl.from_epoch(pl.Series(first), time_unit="s").dt.year()
        cols += [
            pl.Series("anchor_age", anchor_age).cast(pl.String),
            anchor_year.cast(pl.String).alias("anchor_year"),
            pl.repeat(None, len(first), dtype=pl.String, eager=True).alias("dod"),
        ]
    sink.write(df.with_columns([c for c in cols if c.name in df.columns]))


def _write_admissions(demo: Demo, plan: Plan, sink: CsvSink) -> None:
    adm = demo.admissions
    profile = [c for c in PROFILE_COLUMNS if c in adm.columns]
    for lo, hi in _chunks(plan.src.size, CHUNK_ADMISSIONS):
        src = plan.src[lo:hi]
        psrc = plan.profile_src[plan.patient[lo:hi]]
        delta_s = plan.admit_s[lo:hi] - demo.admit_s[src]
        delta_d = plan.admit_s[lo:hi] // SECONDS_PER_DAY - demo.admit_s[src] // SECONDS_PER_DAY
        cols = _shifted(demo.admission_times, src, delta_s, delta_d)
        last = pl.Series(plan.is_last[lo:hi])
        cols = [
            c.zip_with(last, pl.Series([None] * c.len(), dtype=pl.String)) if c.name == "deathtime" else c
            for c in cols
        ]
        for j, f in enumerate(PROFILE_COLUMNS):
            if f in profile:
                pick = np.where(plan.profile_noise[lo:hi, j], src, psrc)
                cols.append(adm[f].gather(pick))
        cols += [
            pl.Series("subject_id", plan.subject_id[plan.patient[lo:hi]]).cast(pl.String),
            pl.Series("hadm_id", plan.hadm_id[lo:hi]).cast(pl.String),
            pl.Series("row_id", np.arange(lo + 1, hi + 1)).cast(pl.String),
        ]
        if "hospital_expire_flag" in adm.columns:
            died = (adm["hospital_expire_flag"].gather(src) == "1") & last
            cols.append(died.cast(pl.Int8).cast(pl.String).alias("hospital_expire_flag"))
        sink.write(adm[src].with_columns([c for c in cols if c.name in adm.columns]))


def _write_events(
    demo: Demo, plan: Plan, role: str, keep: float, rng: np.random.Generator, sink: CsvSink
) -> None:
    table = demo.events[role]
    frame = table.frame
    for lo, hi in _chunks(plan.src.size, CHUNK_ADMISSIONS):
        src = plan.src[lo:hi]
        cnt = table.count[src]  # (n,)
        total = int(cnt.sum())
        owner = np.repeat(np.arange(hi - lo), cnt)  # (R,) admission (chunk-local) of each candidate row
        within = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        rows = table.start[src][owner] + within  # (R,) demo row
        draw = rng.random(total)  # drawn whatever keep is, so outputs for other tables do not shift
        if keep < 1.0:
            mask = draw < keep
            rows, owner = rows[mask], owner[mask]
        if rows.size == 0:
            continue
        adm = lo + owner  # (R,) global admission index
        delta_s = plan.admit_s[adm] - demo.admit_s[plan.src[adm]]
        delta_d = plan.admit_s[adm] // SECONDS_PER_DAY - demo.admit_s[plan.src[adm]] // SECONDS_PER_DAY
        cols = _shifted(table.times, rows, delta_s, delta_d)
        cols += [
            pl.Series("subject_id", plan.subject_id[plan.patient[adm]]).cast(pl.String),
            pl.Series("hadm_id", plan.hadm_id[adm]).cast(pl.String),
            pl.Series("row_id", np.arange(sink.rows + 1, sink.rows + rows.size + 1)).cast(pl.String),
        ]
        sink.write(frame[rows].with_columns([c for c in cols if c.name in frame.columns]))


def _copy_dictionary(src: Path, dst: Path, *, gz: bool, upper_headers: bool) -> None:
    """Copy a D_ICD table: bytes as they are when the format matches, else re-encode the header / compression."""
    src_gz = src.suffix == ".gz"
    if src_gz == gz and not upper_headers:
        shutil.copyfile(src, dst)
        return
    opener = gzip_mod.open if src_gz else open
    with opener(src, "rb") as fin:
        header = fin.readline()
        if upper_headers:
            header = header.upper()
        out = gzip_mod.open(dst, "wb", compresslevel=1) if gz else open(dst, "wb")  # noqa: SIM115
        with out:
            out.write(header)
            shutil.copyfileobj(fin, out, 1 << 20)


def default_keep(demo: Demo, role: str) -> float:
    """Row keep probability that brings the demo's rows per admission to the full database's scale (≤ 1)."""
    per_adm = demo.events[role].count.mean()
    return float(min(1.0, demo.layout.rows_per_admission[role] / per_adm)) if per_adm > 0 else 1.0


def generate_raw(
    layout: str,
    patients: int,
    out: Path | str,
    *,
    gzip: bool = False,
    upper_headers: bool = False,
    seed: int = 0,
    rx_keep: float | None = None,
    dx_keep: float | None = None,
    px_keep: float | None = None,
    n_clusters: int | None = None,
    visits_mean: float | None = None,
    gzip_level: int = 1,
    demo_root: Path | None = None,
    quiet: bool = True,
) -> dict[str, int]:
    """Write synthetic MIMIC-III / MIMIC-IV raw tables for `patients` new patients into `out`.

    Returns row counts per table role (`patients`, `admissions`, `diagnoses_icd`, `procedures_icd`,
    `prescriptions`, `d_icd_diagnoses`, `d_icd_procedures`; data rows, header excluded) and writes them, with
    the options used, to `out/_generator.json`. Keep probabilities left as None take `default_keep`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}")
    if patients < 1:
        raise ValueError("patients must be ≥ 1")
    lay = LAYOUTS[layout]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    demo = load_demo(lay, demo_root)
    # independent streams: the plan, then one per event table
    plan_rng, *table_rngs = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(1 + len(EVENT_ROLES))
    )
    plan = plan_patients(demo, patients, plan_rng, n_clusters, visits_mean)
    keeps = {
        "diagnoses_icd": dx_keep if dx_keep is not None else default_keep(demo, "diagnoses_icd"),
        "procedures_icd": px_keep if px_keep is not None else default_keep(demo, "procedures_icd"),
        "prescriptions": rx_keep if rx_keep is not None else default_keep(demo, "prescriptions"),
    }
    for role, p in keeps.items():
        if not 0.0 < p <= 1.0:
            raise ValueError(f"keep probability for {role} must be in (0, 1], got {p}")

    counts: dict[str, int] = {}

    def sink(role: str) -> CsvSink:
        return CsvSink(
            out / lay.file_name(role, gzip), gz=gzip, upper_headers=upper_headers, gzip_level=gzip_level
        )

    for role, writer in (("patients", _write_patients), ("admissions", _write_admissions)):
        s = sink(role)
        writer(demo, plan, s)
        s.close()
        counts[role] = s.rows
        _say(quiet, f"{role}: {s.rows:,} rows ({time.perf_counter() - t0:.1f} s)")
    for role, rng in zip(EVENT_ROLES, table_rngs, strict=True):
        s = sink(role)
        _write_events(demo, plan, role, keeps[role], rng, s)
        s.close()
        counts[role] = s.rows
        _say(quiet, f"{role}: {s.rows:,} rows, keep {keeps[role]:.3f} ({time.perf_counter() - t0:.1f} s)")
    for role in DICT_ROLES:
        src = _demo_file(demo.folder, lay, role)
        _copy_dictionary(src, out / lay.file_name(role, gzip), gz=gzip, upper_headers=upper_headers)
        counts[role] = _read_strings(src).height

    meta = {
        "layout": layout,
        "patients": patients,
        "seed": seed,
        "gzip": gzip,
        "upper_headers": upper_headers,
        "keep": keeps,
        "clusters": int(plan.clusters.max() + 1),
        "visits_mean": visits_mean if visits_mean is not None else lay.visits_mean,
        "counts": counts,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "_generator.json").write_text(json.dumps(meta, indent=2) + "\n")
    return counts


# ------------------------------------------------------------------------------------------------ visits
def generate_visits(
    src: Path | str, patients: int, out: Path | str, seed: int = 0, chunk_patients: int = 100_000
) -> int:
    """Resample the patients of an artifact's visits.parquet into `patients` new ones; returns rows written.

    Each new patient copies every visit of a random source patient (same codes, profile, admit times and
    visit_no) under a new subject_id (1..patients) and new unique hadm_ids. Written in row groups of one chunk
    of patients each, so memory stays bounded whatever the size; the schema is the source's.
    """
    import pyarrow.parquet as pq

    if patients < 1:
        raise ValueError("patients must be ≥ 1")
    visits = pl.read_parquet(src).sort("subject_id", "visit_no")
    subjects = visits["subject_id"].to_numpy()
    if subjects.size == 0:
        raise ValueError(f"{src} has no visits")
    starts = np.flatnonzero(np.concatenate([[True], subjects[1:] != subjects[:-1]]))  # (S,)
    counts = np.diff(np.concatenate([starts, [subjects.size]]))  # (S,)
    rng = np.random.default_rng(seed)
    schema = visits.to_arrow().schema
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    written = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for lo, hi in _chunks(patients, chunk_patients):
            pick = rng.integers(starts.size, size=hi - lo)  # (n,) source patient of each new patient
            cnt = counts[pick]
            owner = np.repeat(np.arange(hi - lo), cnt)
            rows = starts[pick][owner] + np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            chunk = visits[rows].with_columns(
                pl.Series("subject_id", 1 + lo + owner, dtype=pl.Int64),
                pl.Series("hadm_id", 1_000_000_000 + written + np.arange(rows.size), dtype=pl.Int64),
            )
            writer.write_table(chunk.to_arrow().cast(schema), row_group_size=rows.size)
            written += rows.size
    tmp.replace(out)
    return written


# ------------------------------------------------------------------------------------------------ CLI
def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("raw", help="synthetic raw MIMIC tables (resampled demo admissions)")
    r.add_argument("--layout", choices=sorted(LAYOUTS), default="mimic4")
    r.add_argument("--patients", type=int, default=300_000)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--gzip", action="store_true", help="write .csv.gz (gzip level --gzip-level)")
    r.add_argument("--gzip-level", type=int, default=1)
    r.add_argument("--upper-headers", action="store_true", help="UPPER-CASE column names (as full MIMIC-III)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--rx-keep", type=float, default=None, help="P(keep a prescription row); default: full-db scale"
    )
    r.add_argument(
        "--dx-keep", type=float, default=None, help="P(keep a diagnosis row); default: full-db scale"
    )
    r.add_argument(
        "--px-keep", type=float, default=None, help="P(keep a procedure row); default: full-db scale"
    )
    r.add_argument("--clusters", type=int, default=None, help="k-means clusters of demo admissions")
    r.add_argument("--visits-mean", type=float, default=None, help="mean admissions per patient")
    r.add_argument(
        "--demo-root", type=Path, default=None, help="folder holding mimic-iii-demo/ and mimic-iv-demo/"
    )
    v = sub.add_parser(
        "visits", help="synthetic visits.parquet (resampled artifact patients) for leader predict"
    )
    v.add_argument("--from", dest="src", type=Path, required=True, help="an artifact's visits.parquet")
    v.add_argument("--patients", type=int, default=1_000_000)
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    if args.mode == "raw":
        counts = generate_raw(
            args.layout,
            args.patients,
            args.out,
            gzip=args.gzip,
            upper_headers=args.upper_headers,
            seed=args.seed,
            rx_keep=args.rx_keep,
            dx_keep=args.dx_keep,
            px_keep=args.px_keep,
            n_clusters=args.clusters,
            visits_mean=args.visits_mean,
            gzip_level=args.gzip_level,
            demo_root=args.demo_root,
            quiet=False,
        )
        print("| table | rows |\n|---|---:|\n" + "\n".join(f"| {k} | {v:,} |" for k, v in counts.items()))
    else:
        rows = generate_visits(args.src, args.patients, args.out, args.seed)
        print(f"{args.out}: {args.patients:,} patients, {rows:,} visit rows")
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
