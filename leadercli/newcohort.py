"""`leader preprocess --for-run RUN --raw DIR`: raw tables of new patients → a prediction input folder.

The job `leader` exists for: patients the run has never seen, whose latest admission has no prescriptions yet.
Unlike `leader preprocess` there is no split, no refit and no vocabulary filter — the run's vocabulary and
label list are used as they are (`leader predict` maps the codes the run does not know to UNK and counts them):

- every admission with at least one diagnosis or procedure and an admit time is a visit, ordered by admit
  time (ties by hadm_id); the latest one is the visit to prescribe for and needs no prescription; earlier
  visits keep their mapped drugs (NDC → ATC-3 by the same two routes as `leader preprocess`) as history;
- codes keep the prefixed form (`D10:I10`) — no frequency filter — and `codes.parquet` keeps the title of
  every code from the raw D_ICD tables and the WHO ATC names, so that a code unknown to the run is still known
  by name (the teacher's prompts use it) and counted;
- the profile columns are those of the run's vocabulary (MIMIC-III / MIMIC-IV admission fields, gender, age
  group), filled as `leader preprocess` fills them.

Files (written to a temporary sibling folder, renamed into place when complete):

| file | content |
|---|---|
| `visits.parquet` | the artifact's visits schema (`subject_id`, `hadm_id`, `admittime`, `visit_no`, `diagnoses`, `procedures`, `medications`, profile columns), sorted by subject and visit |
| `codes.parquet` | `kind`, `code`, `title`, `known` (in the run's vocabulary), `visits` (visits carrying it) |
| `manifest.json` | `kind = "prediction-input"`, the run (path, kind, label hash, vocab hash), source, input files with size and sha256, counts per step, per kind the number of codes / code rows unknown to the run (all visits and target visits) |

Building it costs no more than `leader preprocess` on the same tables (the same scans, no vocabulary fit).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from rich.table import Table

from leadercli import __version__, console, runs
from leadercli.data import artifact as A
from leadercli.data import cohort, contract, tables, vocab
from leadercli.data.bundled import bundled_aux
from leadercli.data.layouts import SourceLayout
from leadercli.data.preprocess import hash_files, map_drugs
from leadercli.data.registry import get_layout
from leadercli.errors import ArtifactError, InputError
from leadercli.paths import check_free_space, check_writable_dir, replaced_folder
from leadercli.settings import MedsSettings

KIND = contract.KIND
KEYS = cohort.KEYS
CODES = contract.CODES


@dataclass
class NewCohortResult:
    path: Path
    manifest: dict


def check_target(target: Path) -> None:
    """Only an empty folder or an earlier prediction input folder may be replaced."""
    if target.exists() and not target.is_dir():
        raise InputError(f"output {target} exists and is not a folder", "Choose another --out")
    if target.is_dir() and any(target.iterdir()):
        m = target / A.MANIFEST
        try:
            kind = json.loads(m.read_text()).get("kind") if m.is_file() else None
        except (OSError, ValueError):
            kind = None
        if kind != KIND:
            raise InputError(
                f"output folder {target} exists and is not a prediction input folder",
                "Choose another --out or remove the folder",
            )


def build_for_run(
    settings, run_dir: Path, raw_dir: Path, out: Path, source: str | None = None
) -> NewCohortResult:
    """Read the raw tables of `raw_dir` and write the prediction input folder `out` for the run `run_dir`."""
    t0 = time.perf_counter()
    run_dir, raw_dir, out = Path(run_dir), Path(raw_dir), Path(out)
    manifest = _run_manifest(run_dir)
    voc = runs.read_run_vocab(run_dir, manifest)
    run_source = (manifest.get("artifact") or {}).get("source")
    source = source or run_source or settings.data.source
    _check_source(run_dir, run_source, source)
    if source == "meds":
        settings = _run_meds_rules(settings, manifest, run_dir)
    if out.resolve() == raw_dir.resolve() or raw_dir.resolve() in out.resolve().parents:
        raise InputError(
            f"--out {out} is inside the raw folder {raw_dir}", "Write the input folder elsewhere"
        )
    check_target(out)
    check_writable_dir(out.parent, "prediction input folder", "Choose another --out")  # before any reading
    check_free_space(out.parent, 0, "prediction input folder")
    aux_dir = Path(settings.paths.aux) if settings.paths.aux is not None else bundled_aux()
    layout = get_layout(source).configure(settings)
    raw_files = layout.locate(raw_dir, settings)
    aux_files = tables.locate_aux(aux_dir, settings.data.ddi_file)
    console.info(f"Building a prediction input for {run_dir} from {raw_dir} ({source})")

    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashes = pool.submit(hash_files, {**raw_files, **{f"aux.{k}": v for k, v in aux_files.items()}}, stop)
        try:
            raw = layout.read(raw_files, allow_empty_prescriptions=True)
            visits, codes, counts = _assemble(raw, raw_files, aux_files, voc, layout)
            _warn_no_history_drugs(visits, raw, manifest, layout)
        except BaseException:
            stop.set()
            raise
        file_info = hashes.result()

    out_manifest = {
        "format": 1,
        "kind": KIND,
        "source": source,
        "source_version": raw.source_version,
        "leadercli_version": __version__,
        "run": {
            "path": str(run_dir.resolve()),
            "kind": manifest.get("kind"),
            "labels_hash": manifest.get("labels_hash"),
            "vocab_hash": (manifest.get("artifact") or {}).get("vocab_hash"),
        },
        "inputs": {"raw_dir": str(raw_dir), "aux_dir": str(aux_dir), "files": file_info},
        "tables": raw.counts,
        **counts,
        "elapsed_s": round(time.perf_counter() - t0, 2),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with console.step(f"Writing {out}"):
        _write(out, visits, codes, out_manifest)
    console.info(f"Wrote {out} in {out_manifest['elapsed_s']:.1f} s")
    return NewCohortResult(out, out_manifest)


def _run_manifest(run_dir: Path) -> dict:
    """The manifest of the run `--for-run` names, or an error saying what the folder is instead."""
    hint = "Pass --for-run a run folder written by `leader train` / `leader distill`"
    if not run_dir.exists():
        raise ArtifactError(f"--for-run {run_dir} does not exist", hint)
    if not run_dir.is_dir():
        raise ArtifactError(f"--for-run {run_dir} is a file, not a run folder", hint)
    if not (run_dir / A.MANIFEST).is_file():
        raise ArtifactError(f"--for-run {run_dir} is not a run folder (no {A.MANIFEST})", hint)
    manifest = runs.read_manifest(run_dir)
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind not in runs.KINDS:
        if (run_dir / A.VISITS).is_file() and (run_dir / A.VOCAB).is_file():
            what = "a preprocess artifact, not a leadercli run"
        elif isinstance(kind, str):
            what = f"a {kind} folder, not a leadercli run"
        else:
            what = f"not a leadercli run (kind {kind!r})"
        raise ArtifactError(f"--for-run {run_dir} is {what}", hint)
    return manifest


def _check_source(run_dir: Path, run_source: str | None, source: str) -> None:
    """Another source than the run's is refused unless it has the same codes and profile fields (MIMIC-IV
    tables and MIMIC-IV MEDS: a note)."""
    if not run_source or source == run_source:
        return
    if get_layout(run_source).profile_fields() != get_layout(source).profile_fields():
        raise InputError(
            f"run {run_dir} was trained on {run_source} data; --source {source} has other profile fields and "
            "codes, so every new patient would be read against the wrong vocabulary",
            f"Read the new patients as {run_source} (leave out --source), or use a run trained on {source} data",
        )
    console.info(f"note: the run was trained on {run_source} data; reading the new patients as {source}")


def _run_meds_rules(settings, manifest: dict, run_dir: Path):
    """The settings with the `[meds]` patterns and visit rule the run's artifact was built with (recorded in
    the run's manifest; a run without them: its artifact's manifest, then the current settings). One line
    says so when the current settings differ."""
    art = manifest.get("artifact") or {}
    recorded, where = art.get("meds"), "the run's manifest"
    if recorded is None and art.get("path"):
        try:
            recorded = json.loads((Path(art["path"]) / A.MANIFEST).read_text()).get("meds")
            where = "the run's artifact"
        except (OSError, ValueError, AttributeError):
            recorded = None
    if recorded is None:
        console.info(f"note: {run_dir} does not record its meds.* settings; using the current ones")
        return settings
    try:
        rules = MedsSettings(**recorded)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{where} of {run_dir} records meds.* settings that do not load ({type(exc).__name__})",
            "Re-run `leader preprocess` and train the run again, or pass another --for-run",
        ) from None
    differ = [k for k, v in rules.model_dump().items() if getattr(settings.meds, k) != v]
    if differ:
        console.info(
            "note: using the meds.* settings the run was built with; the current ones differ in "
            + ", ".join(f"meds.{k}" for k in differ)
        )
    return settings.model_copy(update={"meds": rules})


def _warn_no_history_drugs(visits: pl.DataFrame, raw, manifest: dict, layout: SourceLayout) -> None:
    """Every history visit without a drug, where the run was trained on histories with drugs: a warning on
    stderr (even with --quiet) with the counts, since predictions would run without the history drugs."""
    hist = visits.filter(pl.col("visit_no") < pl.col("visit_no").max().over("subject_id"))
    trained = ((manifest.get("cohort") or {}).get("multi_visit_patients") or 0) > 0
    if hist.height == 0 or not trained or (hist["medications"].list.len() > 0).any():
        return
    read = raw.counts.get("prescriptions", {}).get("rows", 0) + raw.counts.get("prescriptions", {}).get(
        "atc_rows", 0
    )
    settings_hint = (
        "check meds.medication_ndc, meds.medication_atc and meds.visit_column"
        if layout.name == "meds"
        else "check the prescriptions table and --aux"
    )
    console.err.print(
        f"warning: none of the {hist.height:,} history visits of {hist['subject_id'].n_unique():,} patients has "
        f"a drug ({read:,} drug rows read), while the run was trained with drugs in every history visit: "
        f"{settings_hint}",
        highlight=False,
    )


def _assemble(
    raw, raw_files: dict[str, Path], aux_files: dict[str, Path], voc: A.Vocab, layout: SourceLayout
):
    steps: list[dict] = []

    def record(step: str, description: str, frame: pl.DataFrame) -> None:
        per = frame.group_by("subject_id").len()
        steps.append(
            {"step": step, "description": description, "visits": frame.height, "patients": per.height}
        )

    with console.step("Mapping NDC → RXCUI → ATC-3"):
        where = raw_files["prescriptions"].name if "prescriptions" in raw_files else "the drug events"
        meds, coverage = map_drugs(raw, aux_files, where=where)

    with console.step("Building the visits"):
        keys = pl.concat([raw.diagnoses.select(KEYS), raw.procedures.select(KEYS)]).unique().sort(KEYS)
        record("dx_or_px", "admissions with a diagnosis or a procedure", keys)
        ordered = cohort.order_visits(keys, raw.admissions)
        record("admitted", "... and an ADMISSIONS row with an admit time", ordered)
        if ordered.height == 0:
            raise InputError(
                f"no admission in {next(iter(raw_files.values())).parent} has a diagnosis or procedure and an admit time",
                "Check --source and --raw (ADMISSIONS.admittime must be filled)",
            )
        empty = pl.lit([], dtype=pl.List(pl.String))
        visits = (
            ordered.join(cohort.code_lists(raw.diagnoses, "diagnoses", True), on=KEYS, how="left")
            .join(cohort.code_lists(raw.procedures, "procedures", True), on=KEYS, how="left")
            .join(cohort.code_lists(meds.rename({"atc3": "code"}), "medications", False), on=KEYS, how="left")
            .with_columns(pl.col(c).fill_null(empty) for c in contract.LIST_COLUMNS)
        )
        fields = tuple(voc.profile.keys())
        visits = cohort.visit_profile(visits, raw.admissions, raw.patients, layout)
        missing = [f for f in fields if f not in visits.columns]
        visits = visits.with_columns(pl.lit(A.UNKNOWN).alias(f) for f in missing)
        visits = A.visits_table(visits, fields)

    with console.step("Titles and unknown codes"):
        titles = {
            **raw.titles,
            "medications": vocab.atc3_names(aux_files["who_atc"]),
        }
        is_target = pl.col("visit_no") == pl.col("visit_no").max().over("subject_id")
        codes_parts, unknown = [], {}
        for kind in A.CODE_KINDS:
            long = visits.select("subject_id", is_target.alias("target"), pl.col(kind).alias("code")).explode(
                "code"
            )
            long = long.filter(pl.col("code").is_not_null())
            known = pl.col("code").is_in(pl.Series(getattr(voc, kind).codes, dtype=pl.String))
            per_code = (
                long.group_by("code")
                .agg(pl.len().alias("visits"))
                .with_columns(known.alias("known"), pl.lit(kind).alias("kind"))
                .join(titles[kind], on="code", how="left")
                .with_columns(pl.col("title").fill_null(""))
            )
            codes_parts.append(
                per_code.with_columns(pl.col("visits").cast(pl.Int64)).select(contract.CODES_COLUMNS)
            )
            unk_rows = long.filter(~known)
            unknown[kind] = {
                "codes": per_code.height,
                "unknown_codes": int((~per_code["known"]).sum()),
                "rows": long.height,
                "unknown_rows": unk_rows.height,
                "target_rows": int(long["target"].sum()),
                "unknown_target_rows": int(unk_rows["target"].sum()),
                "untitled_codes": int((per_code["title"] == "").sum()),
            }
        codes = pl.concat(codes_parts).sort(["kind", "code"])

    n_vis = visits.group_by("subject_id").len()
    counts = {
        "cohort_steps": steps,
        "patients": n_vis.height,
        "visits": visits.height,
        "single_visit_patients": int((n_vis["len"] == 1).sum()),
        "multi_visit_patients": int((n_vis["len"] >= 2).sum()),
        "target_visits_with_prescriptions": int(
            visits.filter(is_target & (pl.col("medications").list.len() > 0)).height
        ),
        "ndc_mapping": coverage,
        "unknown": unknown,
    }
    return visits, codes, counts


def _write(target: Path, visits: pl.DataFrame, codes: pl.DataFrame, manifest: dict) -> None:
    with replaced_folder(target, check_target) as tmp:
        visits.write_parquet(tmp / A.VISITS, compression="zstd", statistics=True)
        codes.write_parquet(tmp / CODES, compression="zstd", statistics=True)
        (tmp / A.MANIFEST).write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )


def print_summary(result: NewCohortResult) -> None:
    m = result.manifest
    table = Table(title=f"prediction input for {m['run']['path']}: {result.path}", header_style="bold")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("patients", f"{m['patients']:,}")
    table.add_row("visits", f"{m['visits']:,}")
    table.add_row(
        "single-visit / multi-visit patients",
        f"{m['single_visit_patients']:,} / {m['multi_visit_patients']:,}",
    )
    for kind, u in m["unknown"].items():
        table.add_row(
            f"{kind}: codes unknown to the run",
            f"{u['unknown_codes']:,} of {u['codes']:,} ({u['unknown_target_rows']:,} of {u['target_rows']:,} in target visits)",
        )
    console.out.print(table)
