"""Source layouts: the contract between a raw EHR layout and the rest of `leader preprocess`.

`leader preprocess` (artifacts) and `leader preprocess --for-run` (new patients) work on `RawData`, the same
frames whatever the source; a layout's job is to find its files and produce that `RawData`. The layouts are
`data/mimic.py` (MIMIC-III, MIMIC-IV: CSV tables) and `data/meds.py` (MEDS: parquet events);
`data/registry.py` maps a source name to its layout object, once, at the top (`leader preprocess`, a run's
source), and the object is passed down from there.

What a new layout must provide (subclass `SourceLayout`, add it to `registry.LAYOUTS` and its name to the
choices of `settings.DataSettings.source`: about two files):

- `name`, `title`; `admission_profile`: the admission-level profile fields, in order (the artifact's profile
  columns are these, then `PATIENT_PROFILE`: gender and age group);
- `locate(raw_dir, settings) -> dict[role, Path]`: the input files (each one hashed into the manifest), a
  missing file or folder an `InputError` naming it;
- `read(files, allow_empty_prescriptions) -> RawData`: the frames below, every user-caused problem an
  `InputError` naming the file and column;
- `default_top_procedures` (the reference's procedure filter), `distill_weights` (the reference's α, β),
  `default_icd_version` (for raw, unprefixed ICD codes in a prediction input, None = needs `icd_version`).

`RawData` (the contract): `admissions` (subject_id, hadm_id, admittime datetime[us], the admission profile
fields as strings), `patients` (subject_id, gender, and whatever `age_years` reads), `diagnoses` /
`procedures` (subject_id, hadm_id, code prefixed `D10:I10` by `data/codes.py`, seq), `prescriptions`
(subject_id, hadm_id, ndc raw string; one row per prescription, or grouped with an `n` column) for NDC
mapping, `atc_events` (subject_id, hadm_id, atc3) for drugs already coded as ATC (none for MIMIC), `titles`
(kind → frame code, title, prefixed), `counts` (per input, rows read), `source_version`; and `age_years()`:
an expression for the age in whole years at `admittime` over the admissions ⋈ patients frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from leadercli.data.artifact import PATIENT_PROFILE


@dataclass
class RawData:
    admissions: pl.DataFrame
    patients: pl.DataFrame
    diagnoses: pl.DataFrame  # long, prefixed codes
    procedures: pl.DataFrame
    prescriptions: (
        pl.DataFrame
    )  # (subject_id, hadm_id, ndc): one row per prescription, or grouped with n rows
    titles: dict[str, pl.DataFrame]  # diagnoses / procedures → (code, title)
    counts: dict
    source_version: str
    atc_events: pl.DataFrame | None = None  # drugs coded as ATC already (subject_id, hadm_id, atc3)
    splits: pl.DataFrame | None = None  # the data's own patient split (subject_id, split), e.g. MEDS


class SourceLayout:
    """Base class: what every layout provides (see the module docstring)."""

    name: str = ""
    title: str = ""
    admission_profile: tuple[str, ...] = ()
    default_top_procedures: int | None = None
    distill_weights: tuple[float, float] = (0.4, 0.005)
    default_icd_version: int | None = None

    def profile_fields(self) -> tuple[str, ...]:
        return self.admission_profile + PATIENT_PROFILE

    def configure(self, settings) -> SourceLayout:
        """The layout with the settings it reads (MEDS: its code patterns); the MIMIC layouts read none."""
        return self

    def locate(self, raw: Path, settings=None) -> dict[str, Path]:
        raise NotImplementedError

    def read(self, files: dict[str, Path], allow_empty_prescriptions: bool = False) -> RawData:
        raise NotImplementedError

    def age_years(self) -> pl.Expr:
        raise NotImplementedError
