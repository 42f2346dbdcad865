"""`leader preprocess`: raw data (MIMIC tables, MEDS events) + aux mapping files → one artifact folder
(DESIGN §3, reference §1).

Steps: the source's layout (`registry.get_layout`, resolved once here and passed down) reads the raw data into
`RawData` (`mimic`, `meds`) → NDC → ATC-3 (`mapping`) → candidate visits: admissions with a
diagnosis, a procedure and a mapped drug, ordered by admit time (`cohort`) → patients with ≥ `min_visits`
visits → optional seeded patient sample → patient split (`splits`) → vocabularies and frequency filters fit on
the training patients (`vocab`) → the filters are applied to every split and the visit rule is applied again
(a visit keeps ≥ 1 in-vocabulary diagnosis, procedure and drug; patients again need `min_visits`) → visits,
patients and profile (`cohort`) → DDI pairs (`ddi`) → manifest.

Writing is atomic: everything is computed in memory first, then the five files go to a temporary sibling
folder that is renamed into place (an existing artifact is replaced only after that succeeded). Parquet files
are byte-identical on a rerun with the same inputs and settings: rows are sorted, lists have a fixed order and
nothing time-dependent is inside them (`created_at` lives only in the manifest).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from rich.table import Table

from leadercli import __version__, console
from leadercli.data import artifact as A
from leadercli.data import cohort, ddi, mapping, splits, tables, vocab
from leadercli.data.bundled import bundled_aux, bundled_raw
from leadercli.data.layouts import RawData, SourceLayout
from leadercli.data.registry import get_layout
from leadercli.errors import InputError
from leadercli.paths import check_free_space, check_writable_dir, replaced_folder
from leadercli.settings import Settings

KEYS = cohort.KEYS


@dataclass
class PreprocessResult:
    path: Path
    manifest: dict


# -- small helpers --------------------------------------------------------------------------------------------
def _sha256(path: Path, stop: threading.Event) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            if stop.is_set():
                return {}
            h.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def hash_files(files: dict[str, Path], stop: threading.Event) -> dict[str, dict]:
    """role → path, size and sha256 of each input file (for the manifest); {} per file once `stop` is set."""
    return {role: _sha256(p, stop) for role, p in files.items()}


def check_target(target: Path) -> None:
    """Refuse to replace anything that is not an artifact folder (or an empty folder)."""
    if target.exists() and not target.is_dir():
        raise InputError(f"output {target} exists and is not a folder", "Choose another --out")
    if target.is_dir() and any(target.iterdir()) and not (target / A.MANIFEST).is_file():
        raise InputError(
            f"output folder {target} exists and is not a leadercli artifact",
            "Choose another --out or remove the folder",
        )


def _patients_visits(frame: pl.DataFrame) -> dict[str, int]:
    per_patient = frame.group_by("subject_id").len()
    return {
        "visits": frame.height,
        "patients": per_patient.height,
        "multi_visit_patients": int((per_patient["len"] >= 2).sum()),
    }


def _semi(frame: pl.DataFrame, keys: pl.DataFrame, on: list[str] | str) -> pl.DataFrame:
    return frame.join(keys, on=on, how="semi")


def _keep_codes(events: pl.DataFrame | pl.LazyFrame, codes: list[str], col: str = "code") -> pl.DataFrame:
    kept = events.lazy().filter(pl.col(col).is_in(pl.Series(codes, dtype=pl.String)))
    return kept.collect(engine="streaming")


def _min_visits(keys: pl.DataFrame, min_visits: int) -> pl.DataFrame:
    if min_visits <= 1:
        return keys
    return keys.filter(pl.len().over("subject_id") >= min_visits)


# -- the pipeline ---------------------------------------------------------------------------------------------
def preprocess(settings: Settings) -> PreprocessResult:
    """Run the whole step and write the artifact folder `settings.artifact_dir()`."""
    t0 = time.perf_counter()
    cfg = settings.data
    source = cfg.source
    if settings.paths.raw is None and source == "meds":
        raise InputError(
            "--source meds needs --raw: there is no bundled MEDS dataset",
            "Pass the MEDS root (the folder with data/ and metadata/), e.g. --raw /data/mimic-iv-meds",
        )
    raw_dir = Path(settings.paths.raw) if settings.paths.raw is not None else bundled_raw(source)
    aux_dir = Path(settings.paths.aux) if settings.paths.aux is not None else bundled_aux()
    target = Path(settings.artifact_dir())
    check_target(target)
    check_writable_dir(target.parent, "artifact folder", "Choose another --out")  # before any reading
    check_free_space(target.parent, 0, "artifact folder")
    layout = get_layout(source).configure(settings)
    raw_files = layout.locate(raw_dir, settings)
    aux_files = tables.locate_aux(aux_dir, cfg.ddi_file)
    console.info(f"Preprocessing {source} ({layout.title}) from {raw_dir}")

    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashes: Future = pool.submit(
            hash_files, {**raw_files, **{f"aux.{k}": v for k, v in aux_files.items()}}, stop
        )
        try:
            built = _build(settings, layout, raw_files, aux_files)
        except BaseException:
            stop.set()
            raise
        file_info = hashes.result()

    visits, patients, voc, ddi_pairs, manifest = built
    manifest["inputs"] = {
        "raw_dir": str(raw_dir),
        "aux_dir": str(aux_dir),
        "bundled_demo": settings.paths.raw is None,
        "files": file_info,
    }
    manifest["elapsed_s"] = round(time.perf_counter() - t0, 2)
    manifest["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with console.step(f"Writing {target}"):
        write_artifact(target, visits, patients, voc, ddi_pairs, manifest)
    console.info(f"Wrote {target} in {manifest['elapsed_s']:.1f} s")
    return PreprocessResult(target, manifest)


def _where(raw_files: dict[str, Path], role: str) -> Path:
    """The file to name in a message about `role` (MIMIC: its table; MEDS: the data/ folder of the root)."""
    if role in raw_files:
        return raw_files[role]
    key, path = next(iter(raw_files.items()))  # MEDS: data/train/0.parquet → <root>/data
    return path.parents[len(Path(key).parts) - 2] if key.startswith("data/") else path


def map_drugs(
    raw: RawData,
    aux_files: dict[str, Path],
    ndc_map: pl.DataFrame | None = None,
    where: str = "prescriptions",
) -> tuple[pl.DataFrame, dict]:
    """Visit drugs (subject_id, hadm_id, atc3): NDCs mapped to ATC-3 (two routes), plus drugs already coded
    as ATC (MEDS), unique. `ndc_map`: `mapping.load_ndc_map` of the aux files, when already loaded."""
    if ndc_map is None:
        ndc_map = mapping.load_ndc_map(aux_files["ndc_rxcui"], aux_files["ndc_atc"])
    meds, coverage = mapping.map_medications(raw.prescriptions, ndc_map, where)
    if raw.atc_events is not None and raw.atc_events.height:
        meds = pl.concat([meds, raw.atc_events.select(meds.columns)], how="vertical_relaxed").unique()
        coverage["atc_coded_rows"] = raw.atc_events.height
    meds = meds.filter(pl.col("hadm_id").is_not_null() & pl.col("subject_id").is_not_null())
    return meds, coverage


def _build(settings: Settings, layout: SourceLayout, raw_files: dict[str, Path], aux_files: dict[str, Path]):
    cfg = settings.data
    # the NDC dictionaries (a fixed second of parsing) load in a thread while the raw tables are read; an
    # error in them is raised after the raw tables' own errors, as before
    with ThreadPoolExecutor(max_workers=1) as pool:
        ndc_map = pool.submit(mapping.load_ndc_map, aux_files["ndc_rxcui"], aux_files["ndc_atc"])
        raw = layout.read(raw_files)
        with console.step("Mapping NDC → RXCUI → ATC-3"):
            meds, coverage = map_drugs(
                raw, aux_files, ndc_map.result(), _where(raw_files, "prescriptions").name
            )
    raw.prescriptions = None  # the largest table: released once its drugs are mapped
    if meds.height == 0 and "prescriptions" not in raw_files:  # MEDS: no table to name
        raise InputError(
            f"no drug event's NDC under {_where(raw_files, 'prescriptions')} maps to an ATC code "
            f"({coverage['rows']:,} NDC drug events, {coverage['ndcs']:,} distinct NDCs)",
            "Check meds.medication_ndc (its ndc group must hold the NDC) and the --aux mapping files",
        )
    tables.require_rows(meds, _where(raw_files, "prescriptions"), "no prescription NDC maps to an ATC code")
    raw.counts["prescriptions"] = {
        "rows": coverage["rows"],
        "rows_with_ndc": coverage["rows_with_ndc"],
        "rows_mapped": coverage["rows_mapped"],
        "admissions_with_mapped_drug": meds["hadm_id"].n_unique(),
    }
    console.info(
        f"  NDC → ATC-3: {coverage['row_coverage']:.1%} of rows with an NDC, {coverage['ndc_coverage']:.1%} of NDCs "
        f"(rxnorm route {coverage['routes']['rxnorm']['row_coverage']:.1%}, direct +{coverage['routes']['direct']['row_coverage']:.1%})"
    )

    steps: list[dict] = []

    def record(step: str, description: str, frame: pl.DataFrame) -> None:
        steps.append({"step": step, "description": description, **_patients_visits(frame)})

    with console.step("Building the cohort"):
        keys, ids = _candidate_visits(raw, meds, cfg, raw_files, record)
        split_of = _split(raw, ids, cfg, raw_files)
    train_ids = split_of.filter(pl.col("split") == "train")
    if train_ids.height == 0:
        raise InputError(
            f"too few patients ({len(ids)}) for a training split", "Use more data or a larger sample_fraction"
        )

    with console.step("Fitting vocabularies on the training patients"):
        # the events of the cohort's visits stay lazy queries (no copy of the large tables): the vocabularies
        # count them, then one filtered copy per kind is made and the raw events are released
        dx = raw.diagnoses.lazy().join(keys.lazy(), on=KEYS, how="semi")
        px = raw.procedures.lazy().join(keys.lazy(), on=KEYS, how="semi")
        md = meds.lazy().join(keys.lazy(), on=KEYS, how="semi").rename({"atc3": "code"})
        top_px = settings.top_procedures(layout)
        dx_codes = vocab.top_codes(dx, train_ids, cfg.top_diagnoses)
        px_codes = vocab.top_codes(px, train_ids, top_px)
        med_codes = vocab.top_codes(md, train_ids, cfg.top_medications)
        kept = {"diagnoses": (dx, dx_codes), "procedures": (px, px_codes), "medications": (md, med_codes)}
        removed = {kind: _removed_by_split(ev, codes, split_of) for kind, (ev, codes) in kept.items()}
        dx_f, px_f, md_f = (_keep_codes(ev, codes) for ev, codes in kept.values())
        raw.diagnoses = raw.procedures = meds = dx = px = md = kept = None
        final_keys = cohort.visit_keys(dx_f, px_f, md_f)
        final_keys = _min_visits(_semi(final_keys, keys, KEYS), cfg.min_visits)
        record("vocab_filter", "visits keeping an in-vocabulary diagnosis, procedure and drug", final_keys)
    if final_keys.height == 0:
        raise InputError("no visit is left after the vocabulary filters", "Raise data.top_* or use more data")

    with console.step("Assembling visits and patients"):
        ordered = cohort.order_visits(final_keys, raw.admissions)
        visits = cohort.assemble(ordered, dx_f, px_f, md_f.rename({"code": "atc3"}))
        fields = layout.profile_fields()
        visits = cohort.visit_profile(visits, raw.admissions, raw.patients, layout)
        visits = A.visits_table(visits, fields)
        patients = cohort.patient_table(visits, split_of, fields)

    with console.step("Titles and DDI pairs"):
        titles = {
            **raw.titles,
            "medications": vocab.atc3_names(aux_files["who_atc"]),
        }
        train_patients = patients.filter(pl.col("split") == "train")
        voc = vocab.build_vocab(
            dx_codes, px_codes, med_codes, titles, vocab.profile_values(train_patients, fields)
        )
        cid_atc3 = ddi.load_cid_atc3(aux_files["cid_atc"])
        pair_file = aux_files.get("ddi_top40") or aux_files["ddi_full"]
        cid_pairs, ddi_info = ddi.load_cid_pairs(pair_file, cfg.ddi_topk)
        ddi_pairs = ddi.atc3_pairs(cid_pairs, cid_atc3, med_codes)
    ddi_info["atc3_pairs"] = ddi_pairs.height

    manifest = _manifest(settings, layout, raw, coverage, steps, removed, visits, patients, voc, ddi_info)
    return visits, patients, voc, ddi_pairs, manifest


def _candidate_visits(
    raw: RawData, meds: pl.DataFrame, cfg, raw_files: dict[str, Path], record
) -> tuple[pl.DataFrame, list[int]]:
    """The visits before the vocabulary filters: admissions with a diagnosis, a procedure, a mapped drug and an
    admit time, of patients with >= `min_visits` of them, in the seeded sample; and the sampled patients' ids.
    `record(step, description, keys)` counts each step for the manifest."""
    adm_keys = raw.admissions.filter(pl.col("admittime").is_not_null()).select(KEYS).unique()
    keys = cohort.visit_keys(raw.diagnoses, raw.procedures, meds)
    record("dx_px_drug", "admissions with a diagnosis, a procedure and a mapped drug", keys)
    before = keys.height
    keys = _semi(keys, adm_keys, KEYS)
    record("admitted", "... and an ADMISSIONS row with an admit time", keys)
    if before and keys.height == 0:
        raise InputError(
            f"{_where(raw_files, 'admissions').name}: column 'admittime' is empty for every admission that "
            "has a diagnosis, a procedure and a mapped drug",
            "Visits are ordered by admit time: fill admittime (YYYY-MM-DD hh:mm:ss)",
        )
    keys = _min_visits(keys, cfg.min_visits)
    record("min_visits", f"patients with >= {cfg.min_visits} such visits", keys)
    if keys.height == 0:
        raise InputError(
            f"no admission in {_where(raw_files, 'admissions').parent} has a diagnosis, a procedure and a mapped drug",
            "Check --source, --raw and --aux (the NDC mapping files)",
        )
    ids = splits.sample_patients(keys["subject_id"].unique().to_list(), cfg.sample_fraction, cfg.seed)
    keys = _semi(keys, pl.DataFrame({"subject_id": ids}, schema={"subject_id": pl.Int64}), "subject_id")
    if cfg.sample_fraction is not None:
        record("sample", f"seeded sample of {cfg.sample_fraction:g} of the patients", keys)
    return keys, ids


def _split(raw: RawData, ids: list[int], cfg, raw_files: dict[str, Path]) -> pl.DataFrame:
    """The patient split: seeded (random / sequential), or the data's own (`data.split = "meds"`)."""
    if cfg.split != "meds":
        return splits.split_patients(ids, cfg.split_ratios, cfg.split, cfg.seed)
    given = getattr(raw, "splits", None)
    if given is None:
        raise InputError(
            f"data.split = meds but {_where(raw_files, 'admissions').parent} has no metadata/subject_splits.parquet",
            "Use --source meds with a MEDS root that has it, or set data.split = random",
        )
    out = pl.DataFrame({"subject_id": ids}, schema={"subject_id": pl.Int64}).join(
        given, on="subject_id", how="left"
    )
    missing = out.filter(pl.col("split").is_null()).height
    if missing:
        raise InputError(
            f"subject_splits.parquet gives no train/tuning/held_out split for {missing:,} patients",
            "Complete the split file or set data.split = random",
        )
    return out.sort("subject_id")


def _removed_by_split(
    before: pl.DataFrame | pl.LazyFrame, codes: list[str], split_of: pl.DataFrame
) -> dict[str, int]:
    """Visit codes dropped by a vocabulary filter, per split."""
    lost = before.lazy().filter(~pl.col("code").is_in(pl.Series(codes, dtype=pl.String))).select("subject_id")
    by_split = lost.join(split_of.lazy(), on="subject_id", how="left").group_by("split").len()
    counts = dict(by_split.collect(engine="streaming").iter_rows())
    return {s: int(counts.get(s, 0)) for s in A.SPLITS}


def _manifest(settings, layout, raw, coverage, steps, removed, visits, patients, voc, ddi_info) -> dict:
    cfg = settings.data
    n_vis = patients["n_visits"]
    split_patients = dict(patients.group_by("split").len().iter_rows())
    split_visits = dict(
        visits.join(patients.select("subject_id", "split"), on="subject_id")
        .group_by("split")
        .len()
        .iter_rows()
    )
    options = cfg.model_dump(mode="json")
    options["top_procedures"] = settings.top_procedures(layout)
    rules = {"meds": settings.meds.model_dump(mode="json")} if layout.name == "meds" else {}  # for --for-run
    return {
        **rules,
        "format": 1,
        "source": cfg.source,
        "source_version": raw.source_version,
        "leadercli_version": __version__,
        "options": options,
        "tables": raw.counts,
        "ndc_mapping": coverage,
        "cohort_steps": steps,
        "vocab_filter_removed_codes": removed,
        "patients": patients.height,
        "visits": visits.height,
        "single_visit_patients": int((n_vis == 1).sum()),
        "multi_visit_patients": int((n_vis >= 2).sum()),
        "max_visits_per_patient": int(n_vis.max()),
        "splits": {s: int(split_patients.get(s, 0)) for s in A.SPLITS},
        "split_visits": {s: int(split_visits.get(s, 0)) for s in A.SPLITS},
        "vocab_sizes": voc.sizes(),
        "missing_titles": {k: vocab.missing_titles(getattr(voc, k)) for k in A.CODE_KINDS},
        "ddi": ddi_info,
    }


# -- writing --------------------------------------------------------------------------------------------------
def write_artifact(
    target: Path,
    visits: pl.DataFrame,
    patients: pl.DataFrame,
    voc: A.Vocab,
    ddi_pairs: pl.DataFrame,
    manifest: dict,
) -> None:
    """Write the five files into a temporary sibling folder, then rename it to `target`."""
    with replaced_folder(target, check_target) as tmp:
        visits.write_parquet(tmp / A.VISITS, compression="zstd", statistics=True)
        patients.write_parquet(tmp / A.PATIENTS, compression="zstd", statistics=True)
        ddi_pairs.write_parquet(tmp / A.DDI, compression="zstd", statistics=True)
        (tmp / A.VOCAB).write_text(
            json.dumps(voc.to_json(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
        (tmp / A.MANIFEST).write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )


# -- summary --------------------------------------------------------------------------------------------------
def print_summary(result: PreprocessResult) -> None:
    """A one-screen table of the artifact on stdout."""
    m = result.manifest
    cov = m["ndc_mapping"]
    sizes = m["vocab_sizes"]
    table = Table(title=f"{m['source']} artifact: {result.path}", show_header=True, header_style="bold")
    table.add_column("item")
    table.add_column("value", justify="right")
    rows = [
        ("patients", f"{m['patients']:,}"),
        ("visits", f"{m['visits']:,}"),
        ("single-visit patients", f"{m['single_visit_patients']:,}"),
        ("multi-visit patients", f"{m['multi_visit_patients']:,}"),
        ("diagnosis codes", f"{sizes['diagnoses']:,}"),
        ("procedure codes", f"{sizes['procedures']:,}"),
        ("ATC-3 drug classes (labels)", f"{sizes['medications']:,}"),
        ("DDI pairs", f"{m['ddi']['atc3_pairs']:,}"),
        ("NDC → ATC row coverage", f"{cov['row_coverage']:.1%}"),
        ("NDC → ATC NDC coverage", f"{cov['ndc_coverage']:.1%}"),
        ("split train / val / test (patients)", " / ".join(f"{m['splits'][s]:,}" for s in A.SPLITS)),
    ]
    for item, value in rows:
        table.add_row(item, value)
    console.out.print(table)
