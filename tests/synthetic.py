"""A tiny synthetic artifact that follows leadercli.data.artifact's contract (import it as `synthetic`)."""

from __future__ import annotations

import json
import random
import zlib
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from leadercli.data import artifact as A
from leadercli.data.registry import get_layout


def make_synthetic_artifact(path: Path, n_patients: int = 60, seed: int = 0, source: str = "mimic3") -> Path:
    """Write a small artifact whose drugs follow the diagnoses (learnable) and the profile (for first visits)."""
    rng = random.Random(seed)
    diags = [f"D9:{400 + i}" for i in range(30)]
    procs = [f"P9:{3800 + i}" for i in range(10)]
    meds = ["A02B", "B01A", "C07A", "N02B", "J01D", "A12C", "C03C", "N05C", "A06A", "H02A", "R03A", "C10A"]
    fields = get_layout(source).profile_fields()
    values = {f: [f"{f}_{k}" for k in range(3)] for f in fields}
    rows, prows = [], []
    t0 = datetime(2150, 1, 1)
    hadm = 100000
    for p in range(n_patients):
        sid = 1000 + p
        prof = {f: rng.choice(values[f]) for f in fields}
        n = rng.choice([1, 1, 2, 3, 4])
        for v in range(n):
            d = sorted(rng.sample(diags, rng.randint(2, 6)))
            pr = sorted(rng.sample(procs, rng.randint(1, 3)))
            m = {meds[int(c.split(":")[1]) % len(meds)] for c in d}
            m.add(meds[zlib.crc32(prof[fields[0]].encode()) % 3])  # profile-driven drug (stable across runs)
            hadm += rng.randint(1, 50)
            rows.append(
                {
                    "subject_id": sid,
                    "hadm_id": hadm,
                    "admittime": t0 + timedelta(days=400 * p + 30 * v),
                    "visit_no": v,
                    "diagnoses": d,
                    "procedures": pr,
                    "medications": sorted(m),
                    **prof,
                }
            )
        prows.append({"subject_id": sid, "n_visits": n, **prof})
    split_of = {}
    ids = [r["subject_id"] for r in prows]
    n_tr, n_va = int(0.6 * len(ids)), int(0.2 * len(ids))
    for i, s in enumerate(ids):
        split_of[s] = "train" if i < n_tr else ("val" if i < n_tr + n_va else "test")
    path.mkdir(parents=True, exist_ok=True)
    visits = pl.DataFrame(rows).with_columns(pl.col("visit_no").cast(pl.Int32))
    patients = pl.DataFrame(prows).with_columns(
        pl.col("subject_id").map_elements(split_of.get, return_dtype=pl.Utf8).alias("split"),
        pl.col("n_visits").cast(pl.Int32),
    )
    patients = patients.select(["subject_id", "split", "n_visits", *fields])
    visits.write_parquet(path / A.VISITS)
    patients.write_parquet(path / A.PATIENTS)
    vocab = A.Vocab(
        A.CodeList(diags[:-2], [f"diagnosis {c}" for c in diags[:-2]]),  # two codes unseen → UNK
        A.CodeList(procs, [f"procedure {c}" for c in procs]),
        A.CodeList(meds, [f"drug class {c.lower()}" for c in meds]),
        {f: values[f] for f in fields},
    )
    (path / A.VOCAB).write_text(json.dumps(vocab.to_json()))
    pl.DataFrame({"atc3_a": ["A02B", "B01A"], "atc3_b": ["N02B", "C07A"]}).write_parquet(path / A.DDI)
    manifest = {
        "source": source,
        "synthetic": True,
        "splits": {k: list(split_of.values()).count(k) for k in A.SPLITS},
    }
    (path / A.MANIFEST).write_text(json.dumps(manifest))
    return path
