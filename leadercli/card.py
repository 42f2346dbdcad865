"""Model cards and shareable exports of run folders (issue 13 item 5).

`write_card(run_dir)` writes `README.md` into a run folder: Hugging Face Hub metadata (YAML front matter with
`library_name`, `license`, `tags`, `metrics`, `base_model` only when it is a Hub name — never a local path),
then the data source and cohort counts, the settings that define the run, the metrics per group with their 95 %
intervals, the intended use, the limitations and the licence notes of MIMIC and the ATC tables. Only counts and
aggregate metrics appear: no patient-level value.

`export_run(run_dir, out)` writes a copy a colleague can open and share: the weights (`model.safetensors`, or
`adapter/` + `head.safetensors`), `manifest.json` without local paths, `vocab.json`, `ddi.parquet`,
`settings.toml` without local paths, `train_log.jsonl` (losses per epoch/step) and the card; never
`features/` (per-patient teacher states keyed by subject id) or `checkpoint/`. The PEFT adapter's
`base_model_name_or_path` becomes the backbone's name. The copy loads with `leadercli.runs.load_run` /
`Recommender.load` (the teacher then needs its backbone at `teacher.base_model` or the name it was trained with).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import polars as pl
import tomli_w
import tomllib
from safetensors import SafetensorError, safe_open

from leadercli import __version__, runs
from leadercli.errors import ArtifactError, InputError
from leadercli.kinds import KINDS, ROWS, rebuild_hint
from leadercli.modes import fix_tree
from leadercli.paths import check_free_space, check_writable_dir, replaced_folder

CARD = "README.md"
EXPORT_MARK = "exported"
GROUPS = ("overall", "single", "multi")
METRICS = ("prauc", "jaccard", "f1", "ddi_rate", "avg_drugs")
SHARED_FILES = (
    "model.safetensors",
    "head.safetensors",
    "vocab.json",
    "ddi.parquet",
    "train_log.jsonl",
    "calibration.json",  # the calibrator: numbers fitted on the validation split, no patient rows
    "code_text.safetensors",  # title embeddings of the vocabulary's codes (code_titles.FILE), no patient rows
)
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
_LICENCE_NOTES = (
    "The weights were trained on data derived from MIMIC (PhysioNet Credentialed Health Data License 1.5.0 for the "
    "full databases, ODbL for the demos): share them only with people who hold the same data use agreement, and do "
    "not use them to identify patients. Drug names come from the WHO ATC/DDD index, whose terms forbid commercial "
    "use without the WHO Collaborating Centre's permission."
)


def _is_local_path(value: object) -> bool:
    text = str(value or "")
    return (
        text.startswith(("/", "./", "../", "~"))
        or bool(re.match(r"^[A-Za-z]:[\\/]", text))
        or os.sep in text
        and not HUB_NAME.match(text)
    )


def _front_matter(manifest: dict) -> str:
    lines = [
        "---",
        "library_name: leadercli",
        "license: other",
        "license_name: physionet-credentialed-health-data-1.5.0",
        "tags:",
        "- medication-recommendation",
        "- ehr",
        "- leader",
        f"- {manifest.get('kind', 'run')}",
        "metrics:",
        "- average_precision",
        "- jaccard",
        "- f1",
    ]
    base = manifest.get("base_model") or (manifest.get("backbone") or {}).get("name")
    if manifest.get("kind") == "teacher" and base and HUB_NAME.match(str(base)) and not _is_local_path(base):
        lines.append(f"base_model: {base}")
    lines.append("---")
    return "\n".join(lines)


def _n(v: object) -> str:
    return f"{v:,}" if isinstance(v, int) else "?"


def _fmt(entry: dict | None, metric: str) -> str:
    if not entry:
        return "–"
    point = (entry.get("point") or {}).get(metric)  # a group without patients has point None
    b = (entry.get("bootstrap") or {}).get(metric) or {}
    if point is None:
        return "–"
    if "lo" in b and "hi" in b:
        return f"{point:.4f} [{b['lo']:.4f}, {b['hi']:.4f}]"
    return f"{point:.4f}"


def card_text(manifest: dict, settings_text: str | None = None) -> str:
    kind = manifest.get("kind", "run")
    art = manifest.get("artifact") or {}
    cohort = manifest.get("cohort") or {}
    test = (manifest.get("metrics") or {}).get("test") or {}
    th = manifest.get("threshold") or {}
    out = [_front_matter(manifest), "", f"# leadercli {kind} run", ""]
    out += [
        f"A LEADER ({'teacher: language model + LoRA + drug head' if kind == 'teacher' else kind}) model that ranks "
        f"{len(manifest.get('labels', []))} WHO ATC level-3 drug classes for the latest hospital visit of a patient, "
        f"made with leadercli {manifest.get('leadercli_version', __version__)} on {manifest.get('created_at', '?')}.",
        "",
        "## Data",
        "",
        f"- source layout: {art.get('source', '?')}"
        + (f" ({cohort['source_version']})" if cohort.get("source_version") else ""),
        f"- artifact vocab hash {art.get('vocab_hash', '?')}, content hash {art.get('content_hash', '?')}, "
        f"label hash {manifest.get('labels_hash', '?')}",
    ]
    if cohort:
        sp = cohort.get("splits", {})
        out.append(
            f"- cohort: {_n(cohort.get('patients'))} patients, {_n(cohort.get('visits'))} visits "
            f"({cohort.get('single_visit_patients', '?')} single-visit, {cohort.get('multi_visit_patients', '?')} "
            f"multi-visit patients); split train / val / test {sp.get('train', '?')} / {sp.get('val', '?')} / "
            f"{sp.get('test', '?')} patients"
        )
    out += ["", "## Metrics (test split; point value [95 % bootstrap interval])", ""]
    out.append("| group | n | " + " | ".join(METRICS) + " |")
    out.append("|---|---:|" + "---:|" * len(METRICS))
    for g in GROUPS:
        e = test.get(g)
        if e:
            small = " †" if int(e.get("n", 0)) < 100 else ""
            out.append(
                f"| {g}{small} | {e.get('n', '?')} | " + " | ".join(_fmt(e, m) for m in METRICS) + " |"
            )
    if any(int((test.get(g) or {}).get("n", 100)) < 100 for g in GROUPS):
        out += [
            "",
            "† fewer than 100 patients: the interval is wide and the numbers are not a reliable estimate.",
        ]
    out += [
        "",
        f"Decision threshold {th.get('value', '?')} ({th.get('how', '?')}). PRAUC is threshold-free.",
        "",
        "## Settings",
        "",
        f"- samples: {json.dumps((manifest.get('inputs') or {}).get('samples', {}))}",
    ]
    if manifest.get("model_config"):
        cfg = {k: v for k, v in manifest["model_config"].items() if k not in ("profile_sizes",)}
        out.append(f"- model: {json.dumps(cfg)}")
    if kind == "teacher":
        b = manifest.get("backbone") or {}
        out.append(
            f"- backbone: {b.get('name', '?')} (hidden {b.get('hidden_size', '?')}), LoRA {json.dumps(manifest.get('lora', {}))}"
        )
        out.append(
            f"- prompt: {json.dumps((manifest.get('prompt') or {}).get('options', {}))}, ≤ {manifest.get('max_length')} tokens"
        )
    if settings_text:
        out += ["", "The resolved settings are in `settings.toml`."]
    out += [
        "",
        "## Intended use",
        "",
        "Research on medication recommendation: ranking drug classes for a visit from its diagnoses, procedures, "
        "earlier prescriptions and profile, to compare methods or to support a clinician's review. It is not a "
        "medical device and must not prescribe: every recommendation needs a clinician.",
        "",
        "## Limitations",
        "",
        "- Trained on one hospital's records (MIMIC: Beth Israel Deaconess, Boston); records unlike them — other "
        "hospitals, coding habits, time periods — score lower, and a visit whose codes are mostly unknown to the "
        "model falls back on drug frequencies (`leader predict` reports `n_unknown_codes` and warns).",
        "- Labels are ATC level-3 classes mapped from NDCs (about 80 % of prescription rows map); drugs that do not "
        "map are not learned.",
        "- Interactions are the TWOSIDES TOP-40 pairs only; `--max-ddi-pairs` caps them greedily.",
        "- Groups marked † are small; compare runs with the paired bootstrap of `leader report`.",
        "",
        "## Licences",
        "",
        _LICENCE_NOTES,
        "",
    ]
    return "\n".join(out)


def write_card(run_dir: Path, manifest: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    if manifest is None:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    settings = run_dir / "settings.toml"
    text = card_text(manifest, settings.read_text() if settings.is_file() else None)
    (run_dir / CARD).write_text(text, encoding="utf-8")
    return run_dir / CARD


# -- export ---------------------------------------------------------------------------------------------------
def _public_manifest(manifest: dict) -> dict:
    m = json.loads(json.dumps(manifest))
    art = m.get("artifact") or {}
    art.pop("path", None)
    m[EXPORT_MARK] = True
    if _is_local_path(m.get("base_model")):
        m["base_model"] = None  # the default backbone, or set teacher.base_model where the copy is used
        m["base_model_was_local"] = True
    return m


def _public_settings(text: str) -> str:
    """settings.toml without local paths (the [paths] section and path-valued keys are dropped)."""
    data = tomllib.loads(text)
    data.pop("paths", None)
    for section in data.values():
        if isinstance(section, dict):
            for k in [k for k, v in section.items() if isinstance(v, str) and _is_local_path(v)]:
                section.pop(k)
    return tomli_w.dumps(data)


def _check_needed_files(run_dir: Path, manifest: dict) -> None:
    """The files the copy needs to load (weights of a learned kind, the teacher's adapter and head, the DDI
    pairs) are there and readable, before anything is copied."""
    kind = manifest.get("kind")
    hint = rebuild_hint(run_dir, kind)
    learned = next((k.learned for k in ROWS if k.name == kind), False)
    weights = ["head.safetensors"] if kind == "teacher" else ([runs.MODEL_FILE] if learned else [])
    if kind == "teacher":
        runs.check_teacher_files(run_dir, manifest)
    for name in weights:
        path = run_dir / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: an export without it would not load", hint)
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ArtifactError(
                f"{path} is not a readable safetensors file (truncated or damaged: {str(exc)[:80]})", hint
            ) from None
    ddi = run_dir / runs.DDI_COPY
    if not ddi.is_file():
        ddi = Path((manifest.get("artifact") or {}).get("path", "")) / runs.DDI_COPY
    try:
        pl.read_parquet_schema(ddi)
    except (pl.exceptions.PolarsError, OSError):
        raise ArtifactError(
            f"{run_dir / runs.DDI_COPY} is missing or damaged (and so is the artifact's): the export needs the "
            "DDI pairs",
            hint,
        ) from None


def export_run(run_dir: Path, out: Path) -> Path:
    """Write the shareable copy of `run_dir` to `out` (atomic; see the module docstring)."""
    run_dir, out = Path(run_dir), Path(out)
    scorer_manifest = runs.read_manifest(run_dir)
    if scorer_manifest.get("kind") not in KINDS:
        raise ArtifactError(
            f"{run_dir} is not a leadercli run", "Pass a folder written by `leader train` or `leader distill`"
        )
    runs.read_run_vocab(run_dir, scorer_manifest)  # the vocab fits the manifest
    _check_needed_files(run_dir, scorer_manifest)  # a copy that would not load is not shareable
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise InputError(f"--out {out} is inside the run folder {run_dir}", "Export to another folder")
    if out.exists():
        prev = out / "manifest.json"
        exported = False
        if prev.is_file():
            try:
                exported = bool(json.loads(prev.read_text()).get(EXPORT_MARK))
            except (OSError, ValueError):
                exported = False
        if not out.is_dir() or (any(out.iterdir()) and not exported):
            raise InputError(
                f"--out {out} exists and is not an earlier export", "Choose another --out or remove it"
            )
    check_writable_dir(out.parent, "export folder", "Choose another --out")
    check_free_space(
        out.parent, sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()), "export folder"
    )
    with replaced_folder(out) as tmp:
        for name in SHARED_FILES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, tmp / name)
        art_ddi = Path((scorer_manifest.get("artifact") or {}).get("path", "")) / runs.DDI_COPY
        if not (tmp / runs.DDI_COPY).is_file() and art_ddi.is_file():  # runs made before they kept a copy
            shutil.copyfile(art_ddi, tmp / runs.DDI_COPY)
        adapter = run_dir / "adapter"
        if adapter.is_dir():
            (tmp / "adapter").mkdir()
            for f in adapter.iterdir():
                if f.is_file() and f.suffix in (".json", ".safetensors"):
                    shutil.copyfile(f, tmp / "adapter" / f.name)
            cfg_path = tmp / "adapter" / "adapter_config.json"
            if cfg_path.is_file():
                cfg = json.loads(cfg_path.read_text())
                cfg["base_model_name_or_path"] = (scorer_manifest.get("backbone") or {}).get(
                    "name"
                ) or "unknown"
                cfg_path.write_text(json.dumps(cfg, indent=2))
        if (run_dir / "settings.toml").is_file():
            (tmp / "settings.toml").write_text(_public_settings((run_dir / "settings.toml").read_text()))
        manifest = _public_manifest(scorer_manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        write_card(tmp, manifest)
        fix_tree(tmp)
    return out
