"""The prediction-input contract: what a new-patient input to `leader predict` holds (one home for it).

`leader preprocess --for-run` (`newcohort.py`) writes it and `leader predict` (`predict/input.py`) reads
and checks it; the Python API (`Recommender.predict`) takes a frame with the same columns.

An input is a visits table (parquet, CSV, an in-memory frame, or the `visits.parquet` of a prediction input
folder), one row per visit:

| column | type | |
|---|---|---|
| `subject_id`, `hadm_id` | integer, never empty | required (`ID_COLUMNS`) |
| `diagnoses`, `procedures` | list of strings (CSV: `;`-separated codes) | required |
| `admittime` and/or `visit_no` | datetime / integer | at least one, the visit order (`ORDER_COLUMNS`) |
| `medications` | list of strings | optional: history drugs (the latest visit's own drugs are ignored) |
| `icd_version` | integer (9 or 10) | optional: the version of raw, unprefixed ICD codes of the visit |
| profile columns | string | optional: those of the run's vocabulary |

Codes are prefixed as in the artifact (`D9:4019`, `P10:0DTJ4ZZ`, DESIGN §3) or raw ICD codes with an
`icd_version`. The rows of one subject are contiguous and a (subject_id, hadm_id) pair is one row.

A prediction input folder adds `codes.parquet` (`CODES_COLUMNS`: the title of every code, whether the run
knows it, how many visits carry it) and a `manifest.json` of kind `KIND` naming the run it was built for.
"""

from __future__ import annotations

from leadercli.data.artifact import CODE_KINDS, MANIFEST, VISITS

KIND = "prediction-input"  # the manifest's "kind" of a prediction input folder
FILES = (VISITS, "codes.parquet", MANIFEST)  # a prediction input folder's files
CODES = FILES[1]  # kind, code, title, known, visits
CODES_COLUMNS = ("kind", "code", "title", "known", "visits")

ID_COLUMNS = ("subject_id", "hadm_id")  # integers, never empty
REQUIRED = {
    "subject_id": "integer",
    "hadm_id": "integer",
    "diagnoses": "list of strings",
    "procedures": "list of strings",
}
OPTIONAL = {"medications": "list of strings", "icd_version": "integer", "visit_no": "integer"}
ORDER_COLUMNS = ("admittime", "visit_no")  # at least one of them orders a subject's visits
LIST_COLUMNS = CODE_KINDS  # list[str] columns; `;`-separated codes in a CSV
LIST_SEPARATOR = ";"
OUTPUT_SUFFIXES = (".csv", ".parquet")  # what `leader predict -o` writes
INTEGER_COLUMNS = tuple(c for c, kind in {**REQUIRED, **OPTIONAL}.items() if kind == "integer")
