"""Visits → samples: the one rule that turns an artifact (or a visits file) into prediction problems.

A *sample* is one patient (reference §1.7): the target is the patient's last kept visit, the history is the
most recent `max_visits − 1` earlier visits (the reference keeps the *first* 10 visits, which can drop the
target — §7.6). With `per_visit=True` every visit of a patient is a target in turn (GAMENet/SafeDrug style
expansion; an option, not the default). `n_visits` counts the patient's visits up to and including the
target, uncapped: `n_visits == 1` is the single-visit group of the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from leadercli.data.artifact import UNKNOWN, Artifact


@dataclass
class Visit:
    diagnoses: list[str]
    procedures: list[str]
    medications: list[str] = field(default_factory=list)


@dataclass
class Sample:
    subject_id: int
    hadm_id: int
    visits: list[Visit]  # chronological; visits[-1] is the target visit
    profile: dict[str, str]
    n_visits: int  # visits of the patient up to and including the target (uncapped)

    @property
    def target(self) -> Visit:
        return self.visits[-1]


def samples_from_frame(
    visits: pl.DataFrame,
    profile_fields: tuple[str, ...] | list[str],
    max_visits: int = 10,
    per_visit: bool = False,
    profiles: pl.DataFrame | None = None,
) -> list[Sample]:
    """Build samples from a visits frame (artifact schema). Visits are ordered by (subject_id, visit_no) when
    `visit_no` exists, else by admittime. Profiles come from `profiles` (one row per subject) when given,
    else from the patient's first visit in the frame; a missing profile column reads as "unknown"."""
    order = (
        ["subject_id", "visit_no"] if "visit_no" in visits.columns else ["subject_id", "admittime", "hadm_id"]
    )
    visits = visits.sort(order)
    fields = list(profile_fields)
    prof_src = (
        profiles if profiles is not None else visits.unique("subject_id", keep="first", maintain_order=True)
    )
    prof_cols = [f for f in fields if f in prof_src.columns]
    prof_map: dict[int, dict[str, str]] = {}
    for row in prof_src.select(["subject_id", *prof_cols]).iter_rows():
        vals = dict(zip(prof_cols, row[1:], strict=True))
        prof_map[row[0]] = {f: (vals.get(f) if vals.get(f) not in (None, "") else UNKNOWN) for f in fields}

    subjects = visits["subject_id"].to_list()
    hadms = visits["hadm_id"].to_list()
    cols = {
        k: (visits[k].to_list() if k in visits.columns else None)
        for k in ("diagnoses", "procedures", "medications")
    }

    def vis(i: int) -> Visit:
        meds = cols["medications"][i] if cols["medications"] is not None else None
        return Visit(list(cols["diagnoses"][i] or []), list(cols["procedures"][i] or []), list(meds or []))

    samples: list[Sample] = []
    start = 0
    n = len(subjects)
    default_profile = {f: UNKNOWN for f in fields}
    while start < n:
        end = start
        sid = subjects[start]
        while end < n and subjects[end] == sid:
            end += 1
        patient = [vis(i) for i in range(start, end)]
        targets = range(len(patient)) if per_visit else [len(patient) - 1]
        for t in targets:
            hist = patient[max(0, t - max_visits + 1) : t + 1]
            samples.append(
                Sample(sid, hadms[start + t], hist, prof_map.get(sid, default_profile), n_visits=t + 1)
            )
        start = end
    return samples


def load_samples(
    artifact: Artifact, split: str | None, max_visits: int = 10, per_visit: bool = False
) -> list[Sample]:
    """Samples of one split ("train", "val", "test"; None = all) of an artifact, ascending subject_id."""
    patients = artifact.patients()
    if split is not None:
        patients = patients.filter(pl.col("split") == split)
    visits = artifact.visits().join(patients.select("subject_id"), on="subject_id", how="semi")
    return samples_from_frame(visits, artifact.profile_fields(), max_visits, per_visit, profiles=patients)
