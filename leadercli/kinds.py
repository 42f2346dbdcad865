"""Run kinds: the one list of what a run folder can be, which command writes it, what it reads and what its
scores do with codes the run has never seen. Everything that names kinds reads this table: the run loader
(`runs.load_run`, `scorer.py`), the out-folder and argument checks (`runs.check_out_dir`, `cli/checks.py`),
`leader report`, `leader export`, `leader preprocess --for-run`, `leader predict`'s warning and the settings'
`student.model` choices. No heavy imports: the argument checks read it before torch is loaded.

Adding a kind — e.g. a field model trained by `leader train student --model retain`: one `Kind` row below
(`recipe="train student"` puts it among `student.model`'s choices and lets `train student` replace its run
folders); a kind that reads student tensors with a new model class also needs one builder in
`scorer.TENSOR_MODELS` (how its weights are rebuilt from `model.safetensors` and the manifest's
`model_config`). Reports, predict and the API then score it like any other kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Kind:
    name: str  # the manifest's "kind" (and the `--model` value for `train student` kinds)
    recipe: str  # the `leader` command that writes it: "train student", "distill" or "train teacher"
    reads: str  # "tensors" (student tensors: codes, history drugs, profile) or "prompts" (the teacher's text)
    learned: bool  # weights learned from the codes: `predict.unknown_shrink` applies to its scores
    unknown_codes: str  # what its scores do with codes the run does not know (leader predict's warning)
    label: str = ""  # its row name in the report's table (the paper's names: LEADER(T), LEADER(S), RETAIN, …)
    # how it scores a patient without history (a first visit) in the report's table; the field models' own
    # text is their class's `no_history`, recorded in the manifest (`training.no_history`)
    no_history: str = ""

    @property
    def command(self) -> str:
        extra = f" --model {self.name}" if self.recipe == "train student" and self.name != "student" else ""
        return f"leader {self.recipe}{extra}"


_UNK_EMBEDDING = (
    "they all map to one UNK embedding, so the ranking rests on the codes it knows, the history drugs and "
    "the profile"
)

_FIELD_UNK = "they map to one UNK embedding per code kind, so the ranking rests on the codes it knows and "
_STUDENT_FIRST_VISIT = (
    "the visit encoder reads the target visit's codes and the profile (a pseudo visit) alone; no drugs"
)
ROWS = (
    Kind(
        "student",
        "train student",
        "tensors",
        True,
        _UNK_EMBEDDING,
        "Student (no KD)",
        _STUDENT_FIRST_VISIT,
    ),
    Kind("distilled", "distill", "tensors", True, _UNK_EMBEDDING, "LEADER(S)", _STUDENT_FIRST_VISIT),
    Kind(
        "teacher",
        "train teacher",
        "prompts",
        True,
        "its prompt names them by their titles (the run's vocabulary, or the input folder's codes.parquet) "
        "and leaves out codes without one; it was never trained on them",
        "LEADER(T)",
        "its prompt has no history lines: the target visit's code titles and the profile",
    ),
    Kind(
        "popularity",
        "train student",
        "tensors",
        False,
        "popularity reads no codes (every patient gets the training drug frequencies)",
        "Popularity",
        "as every patient: the training drug frequencies",
    ),
    Kind(
        "previous",
        "train student",
        "tensors",
        False,
        "it reads only the previous visit's drugs (else the training drug frequencies), not diagnoses or "
        "procedures",
        "Previous visit",
        "no previous drugs: the training drug frequencies",
    ),
)
# the field's models (issue 22; built by `models/field_build.py`): name → (what else their scores rest on,
# their name in the report's table)
_FIELD = {
    "retain": ("the history visits' codes and drugs", "RETAIN"),
    "gamenet": ("the history visits' codes and drugs", "GAMENet"),
    "micron": ("the earlier visits' codes and drugs", "MICRON"),
    "logreg": ("nothing else (the target visit alone)", "LR"),
    "raremed": ("nothing else (the target visit alone)", "RAREMed"),
}
FIELD_MODELS = tuple(_FIELD)
ROWS += tuple(
    Kind(n, "train student", "tensors", True, _FIELD_UNK + w, lab) for n, (w, lab) in _FIELD.items()
)
BY_NAME = {k.name: k for k in ROWS}
KINDS = tuple(k.name for k in ROWS)
TENSOR_KINDS = tuple(k.name for k in ROWS if k.reads == "tensors")
BASELINES = tuple(k.name for k in ROWS if not k.learned)  # no learned weights: no parameters to count
LEARNED = tuple(k.name for k in ROWS if k.learned)
# LEADER's own runs; every other kind is a baseline of the report's table ("the best baseline": the best
# of the others on overall PRAUC)
LEADER_KINDS = ("teacher", "distilled", "student")
TABLE_BASELINES = tuple(k for k in KINDS if k not in LEADER_KINDS)  # popularity, previous, the field's models
STUDENT_MODELS = tuple(k.name for k in ROWS if k.recipe == "train student")  # `student.model` choices
# the kinds each recipe writes: a run folder is replaced only by the command that wrote it
COMMAND_KINDS = {
    r: tuple(k.name for k in ROWS if k.recipe == r) for r in dict.fromkeys(k.recipe for k in ROWS)
}


def rebuild_hint(run_dir: Path, kind: str | None) -> str:
    """The command that rebuilds a damaged run folder."""
    row = BY_NAME.get(kind or "")
    if row is None:
        return "Retrain it with the command that wrote it (`leader train student`, `leader distill`, `leader train teacher`)"
    return f"Rebuild it with `{row.command} --out {run_dir}`"
