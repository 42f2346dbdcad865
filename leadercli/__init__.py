"""leadercli: LEADER medication recommendation (Liu et al., arXiv 2402.02803) as a command-line tool.

Raw MIMIC-III / MIMIC-IV tables → a reproducible cohort artifact (`leader preprocess`) → an LLM teacher with LoRA
and a drug-classification head (`leader train teacher`) → a small transformer student trained with feature
distillation and profile alignment (`leader distill`) → ranked ATC level-3 drug lists (`leader predict`).

Module map (one line each; the folder says the concern):

    cli/              thin Typer commands (one module per command; main.py only registers them)
    settings.py       pydantic-settings models per stage: defaults < leader.toml < LEADER_* env < options
    errors.py         LeaderError hierarchy: one line + hint, exit code 2
    console.py        results on stdout, progress and logs on stderr (rich), --quiet / --debug
    launcher.py       what torchrun / accelerate launch / mpirun tell a process (rank, world size), torch-free
    offline.py        the HF offline / telemetry switches set at start-up (no network at run time)
    paths.py          output checks before any work: writable, free space, never destroy an input
    hardware.py       device, torch threads and seeds
    config_checks.py  model-config rules (width divisible by heads, threshold order), checked by settings and models
    data/codes.py     the code rule (D9:4019, P10:0DTJ4ZZ: kind + ICD version), its one home
    data/layouts.py   the source-layout contract: SourceLayout and RawData (what reading a raw layout gives)
    data/mimic.py     the MIMIC-III / MIMIC-IV layouts: CSV tables → RawData
    data/meds.py      the MEDS layout: parquet events → RawData (files, metadata, the events' errors)
    data/meds_events.py  MEDS shards streamed per subject group: codes matched, visits assigned, per-visit frames
    data/registry.py  source name → layout object (resolved once by the commands, then passed down)
    data/tables.py    CSV scans with explicit dtypes and schema checks, the aux files, subject partitions
    data/mapping.py   NDC → RXCUI → ATC-3 (two routes)
    data/cohort.py    visits, their order, code lists, profile and age group
    data/vocab.py     frequency filters and vocabularies fit on the training patients, titles
    data/splits.py    seeded patient split and sample
    data/ddi.py       ATC-3 interaction pairs (TOP-40 side-effect rule)
    data/preprocess.py  `leader preprocess`: raw data → artifact folder (atomic)
    data/contract.py  the prediction-input contract (columns, types, ids) that newcohort.py writes and predict reads
    data/artifact.py  the artifact contract (files, Vocab, hashes)
    data/samples.py   visits → samples (the one sample rule); data/batching.py samples → student tensors
    data/prompts.py   samples → teacher prompts (template, length fitting)
    models/           student.py, backbone.py (find, load, tokenise a HF backbone), teacher.py (LoRA + pooling
                      + head, save/load), teacher_infer.py (prompts → scores, features), features.py (feature
                      cache), losses.py, baselines.py (+ the one popularity fit), code_text.py
                      (the title-reading code embedding), title_encoder.py (titles → sentence embeddings);
                      the field's models: retain.py, gamenet.py, micron.py, logreg.py, raremed.py (field.py
                      their shared parts, field_build.py builds them from settings and runs) — tensors in/out.
                      CPU speed paths, each its own module with one call site: student_eval.py (the student's
                      packed evaluation), student_train.py (its packed training forward), student_occlusion.py
                      (occlusion set by set), torch_masks.py (torch's dropout masks drawn ahead), onednn.py,
                      dropout.py (fast seeded masks), lora_fused.py (the teacher's fused LoRA layers)
    training/         one recipe per method: student.py, teacher.py, distill.py; loop.py holds the student
                      components both student recipes use (recipes never import each other); the teacher
                      recipe's stages: teacher_run.py (shared record), teacher_probe.py (head init, linear
                      probe), teacher_save.py (run folder); teacher_features.py (distill's feature cache);
                      distributed.py (data-parallel student training: torchrun / accelerate launch, gloo/NCCL);
                      code_text.py (a title-reading student's title table, both student recipes);
                      field_models.py (the field's models under the student's protocol); batches.py (batches
                      and dropout masks built ahead in a background thread)
    checkpoint.py     the one resume-checkpoint format (weights, optimizer, scheduler, RNG; safetensors)
    kinds.py          the run kinds, one row each (command, input, learned, unknown codes): the one list
    newcohort.py      `leader preprocess --for-run`: new patients' raw data → prediction input folder, read
                      against a run's vocabulary and recorded rules (above runs.py, which it reads)
    runs.py           run folders: manifests, checks, `load_run(path)` → a Scorer for every run kind
    scorer.py         `Scorer` (TensorScorer, TeacherScorer): a loaded run and its output rules (its
                      calibrator, the unknown-code shrink), the same scores in predict, report and the API
    code_titles.py    a title-reading student run's title table (code_text.safetensors, checked on load) and the
                      codes it does not know read by their titles at prediction (embedded once per call)
    calibration.py    ECE, Brier, reliability bins; temperature scaling fitted after training (calibration.json)
    explain.py        occlusion explanations through any Scorer (`leader predict --explain K`)
    predict/          `leader predict`: any run → streamed, batched inference → ranked table (+ .meta.json):
                      input.py (read, check), streaming.py (subject chunks, background encoding, ordered
                      results), ranking.py (top-k, threshold, DDI cap), output.py (output checks, writer,
                      sidecar), command.py (`predict_file`)
    selection.py      threshold and the greedy DDI cap (`--max-ddi-pairs`)
    api.py            `Recommender`: the Python API (load / predict / predict_raw)
    metrics.py        pure metric functions, bootstrap intervals, paired comparison, threshold choice
    report/           score_runs.py, score_predictions.py, floor.py (popularity floor), timing.py (latency,
                      machine), evaluate.py, table.py (the paper's table: every model, every group, costs),
                      rows.py (table rows as text), write.py, render.py (md/html), plots.py, calibrated.py
                      (ECE/Brier section), explained.py (sample patients' explanations)
    demo.py           `leader demo`: the whole chain on the bundled sample data
"""

__version__ = "0.1.0"
__all__ = ["Recommender", "__version__"]


def __getattr__(name: str):
    # lazy, so that `import leadercli` (and `leader --help`) does not import torch
    if name == "Recommender":
        from leadercli.api import Recommender

        return Recommender
    raise AttributeError(f"module 'leadercli' has no attribute {name!r}")
