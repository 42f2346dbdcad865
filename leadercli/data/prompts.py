"""Teacher prompts: a sample's visits rendered as the reference's text template (leader-reference.md §2,
DESIGN §4), with the `<DIGNOSIS>` bug fixed (§7 item 3) and a length fitter that never cuts the cue
(§7 item 9).

The template, character for character as in the reference notebooks (nb3#37-40, nb4#39-42):

    MAIN = "The patient has {n_prev} times ICU visits. \\n {history} In this visit, {pronoun} has
            diagnosis: {diag}; procedures: {proc}. Then, the patient should be prescribed: "
    HIST = "In {k} visit, the patient had diagnosis: {diag}; procedures: {proc}. The patient was
            prescribed drugs: {meds}. \\n"
    (each one line in the source; a line break here stands for one space)

Spacing is kept exactly, quirks included: "visits. \\n " then the history lines glued together (each ends with
" \\n" and the next starts right after it), then " In this visit". With no history that leaves two spaces
("visits. \\n  In this visit"). The trailing space after the cue is kept too. These are not bugs (the text is
unambiguous) and keeping them makes prompts comparable with the reference.

What differs from the reference:
- each history line shows its OWN diagnoses (the reference filled every line with the target's, §2 "Bug");
- the pronoun of the current-visit sentence is "the patient" by default ("he" was hard-coded);
- `n_prev` is the number of kept visits before the target (`sample.n_visits - 1`) and `k` the 1-based index
  of the visit among them, so a sample truncated to its most recent visits still counts correctly;
- an optional profile sentence (the reference's commented-out variant), built from whatever fields the
  sample's profile has, in its order: "The patient's insurance type is X, language is Y, ... . "

Code → text (§1.6): diagnoses/procedures by their ICD long title, medications by their lower-cased ATC-3 name,
all from the artifact `Vocab`. Codes without a title are left out of the text (as the reference's `decode`
does) and counted (`fit_prompt` reports `untitled_codes`). A list whose codes all lack titles renders empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

TEMPLATE_VERSION = "leader-v1-fixed"

PRONOUNS = {"neutral": "the patient", "he": "he", "she": "she"}

# profile field → phrase of the profile sentence (reference wording for the five MIMIC fields of each source)
PROFILE_PHRASES = {
    "insurance": "insurance type is",
    "language": "language is",
    "religion": "religion is",
    "marital_status": "marital status is",
    "ethnicity": "ethnicity is",
    "admission_type": "admission type is",
    "race": "race is",
    "gender": "gender is",
    "age_group": "age group is",
}

SEP = ", "


class _Visit(Protocol):
    diagnoses: list[str]
    procedures: list[str]
    medications: list[str]


class _Sample(Protocol):
    visits: Sequence[_Visit]
    profile: dict[str, str]
    n_visits: int


@dataclass(frozen=True)
class TextVisit:
    """One visit as text: `index` is 1-based among the patient's kept visits; lists hold titles."""

    index: int
    diagnoses: tuple[str, ...]
    procedures: tuple[str, ...]
    medications: tuple[str, ...]


@dataclass(frozen=True)
class PromptParts:
    """Everything a prompt is made of; `history` holds the rendered previous visits, oldest first."""

    n_prev: int
    history: tuple[TextVisit, ...]
    current: TextVisit
    profile: tuple[tuple[str, str], ...]
    untitled_codes: int  # codes of the rendered visits that have no title (left out of the text)


def profile_phrase(field: str) -> str:
    """`profile_phrase("marital_status") == "marital status is"`; unknown fields read as their name."""
    return PROFILE_PHRASES.get(field, field.replace("_", " ") + " is")


def _titles(codes: Sequence[str], lookup: Callable[[str], str | None]) -> tuple[tuple[str, ...], int]:
    titles = [lookup(c) for c in codes]
    kept = tuple(t for t in titles if t)
    return kept, len(titles) - len(kept)


def build_parts(sample: _Sample, vocab: Any, *, history_visits: int = 3) -> PromptParts:
    """Look up the titles of the target visit and of the last `history_visits` previous visits."""
    if not sample.visits:
        raise ValueError("a sample needs at least one visit (the target)")
    if history_visits < 0:
        raise ValueError("history_visits must be >= 0")
    n_kept = max(int(sample.n_visits), len(sample.visits))
    first_index = n_kept - len(sample.visits) + 1  # 1-based index of sample.visits[0]
    previous = list(sample.visits[:-1])
    start = max(len(previous) - history_visits, 0)
    untitled = 0

    def text_visit(visit: _Visit, index: int, with_meds: bool) -> TextVisit:
        nonlocal untitled
        diag, n_d = _titles(visit.diagnoses, vocab.diagnoses.title)
        proc, n_p = _titles(visit.procedures, vocab.procedures.title)
        meds, n_m = _titles(visit.medications, vocab.medications.title) if with_meds else ((), 0)
        untitled += n_d + n_p + n_m
        return TextVisit(index, diag, proc, meds)

    history = tuple(text_visit(v, first_index + i, True) for i, v in enumerate(previous) if i >= start)
    current = text_visit(sample.visits[-1], n_kept, False)  # the target's drugs are the label, never shown
    profile = tuple((str(k), str(v)) for k, v in sample.profile.items())
    return PromptParts(n_kept - 1, history, current, profile, untitled)


def _trim(parts: PromptParts, history_dropped: int, codes_dropped: int) -> PromptParts:
    """Drop the oldest `history_dropped` history visits, then remove `codes_dropped` codes one at a time from
    the longest list that still has more than one code: history lists first (ties: oldest visit, then
    diagnoses < procedures < medications), then the current visit's lists. The last codes of a list go first.
    """
    history = [list(map(list, (v.diagnoses, v.procedures, v.medications))) for v in parts.history]
    history = history[history_dropped:]
    current = [list(parts.current.diagnoses), list(parts.current.procedures)]
    for _ in range(codes_dropped):
        pool = [lst for visit in history for lst in visit] if _trimmable(history) else current
        longest = max(pool, key=len) if pool else []
        if len(longest) <= 1:
            break
        longest.pop()
    kept = parts.history[history_dropped:]
    new_history = tuple(
        replace(v, diagnoses=tuple(d), procedures=tuple(p), medications=tuple(m))
        for v, (d, p, m) in zip(kept, history, strict=True)
    )
    new_current = replace(parts.current, diagnoses=tuple(current[0]), procedures=tuple(current[1]))
    return replace(parts, history=new_history, current=new_current)


def _trimmable(history: list[list[list[str]]]) -> bool:
    return any(len(lst) > 1 for visit in history for lst in visit)


def _capacity(lists: Sequence[Sequence[str]]) -> int:
    return sum(max(len(lst) - 1, 0) for lst in lists)


def format_prompt(parts: PromptParts, *, include_profile: bool = False, pronoun: str = "neutral") -> str:
    """The reference template filled from `parts` (see the module docstring for the exact spacing)."""
    if pronoun not in PRONOUNS:
        raise ValueError(f"pronoun must be one of {sorted(PRONOUNS)}, not {pronoun!r}")
    head = ""
    if include_profile and parts.profile:
        head = "The patient's " + SEP.join(f"{profile_phrase(k)} {v}" for k, v in parts.profile) + ". "
    history = "".join(
        f"In {v.index} visit, the patient had diagnosis: {SEP.join(v.diagnoses)}; "
        f"procedures: {SEP.join(v.procedures)}. "
        f"The patient was prescribed drugs: {SEP.join(v.medications)}. \n"
        for v in parts.history
    )
    cur = parts.current
    return (
        f"{head}The patient has {parts.n_prev} times ICU visits. \n {history} "
        f"In this visit, {PRONOUNS[pronoun]} has diagnosis: {SEP.join(cur.diagnoses)}; "
        f"procedures: {SEP.join(cur.procedures)}. "
        "Then, the patient should be prescribed: "
    )


def render_prompt(
    sample: _Sample,
    vocab: Any,
    *,
    history_visits: int = 3,
    include_profile: bool = False,
    pronoun: str = "neutral",
    drop: tuple[int, int | None] = (0, None),
) -> str:
    """The prompt of one sample. `drop = (history_dropped, codes_dropped)` applies the reductions that
    `fit_prompt` reports (oldest history visits removed, then codes removed from the longest lists; None = 0),
    so `render_prompt(s, v, drop=(st["history_dropped"], st["codes_dropped"]))` reproduces its prompt."""
    parts = build_parts(sample, vocab, history_visits=history_visits)
    n_hist, n_codes = drop
    parts = _trim(parts, min(max(n_hist, 0), len(parts.history)), max(n_codes or 0, 0))
    return format_prompt(parts, include_profile=include_profile, pronoun=pronoun)


def fit_prompt(
    sample: _Sample,
    vocab: Any,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    *,
    history_visits: int = 3,
    include_profile: bool = False,
    pronoun: str = "neutral",
) -> tuple[str, dict]:
    """The longest prompt of `sample` with at most `max_tokens` tokens (as `count_tokens` counts them).

    Reductions, each only as far as needed (leader-reference §7 item 9):
    1. drop the oldest history visits, down to the most recent one;
    2. shorten that visit's longest code lists (keeping at least one code per list);
    3. drop the last history visit;
    4. shorten the current visit's longest list (keeping at least one code per list).
    The current visit's sentence, the visit count and the cue are never cut. Within steps 2 and 4 the number
    of codes to remove is found by bisection (token counts fall as codes go), so a long prompt costs a few
    dozen `count_tokens` calls at most.

    Returns the prompt and stats `{"history_dropped", "codes_dropped", "truncated", "tokens",
    "untitled_codes"}` where `codes_dropped` counts codes removed from the lists that remain in the prompt.
    When even the minimal prompt is longer than `max_tokens`, it is returned with `truncated = True`: the
    tokenizer must then cut it from the LEFT (teacher.encode_prompts does) so that the current visit and the
    cue survive.
    """
    parts = build_parts(sample, vocab, history_visits=history_visits)
    n_hist = len(parts.history)

    def render(h: int, c: int) -> tuple[str, int]:
        text = format_prompt(_trim(parts, h, c), include_profile=include_profile, pronoun=pronoun)
        return text, count_tokens(text)

    def finish(h: int, c: int, text: str, n: int, truncated: bool = False) -> tuple[str, dict]:
        stats = {
            "history_dropped": h,
            "codes_dropped": c,
            "truncated": truncated,
            "tokens": n,
            "untitled_codes": parts.untitled_codes,
        }
        return text, stats

    # 1. whole history visits, oldest first, down to the most recent one
    for h in range(0, max(n_hist, 1)):
        text, n = render(h, 0)
        if n <= max_tokens:
            return finish(h, 0, text, n)
    # 2. shorten the remaining history visit's lists
    if n_hist:
        last = parts.history[-1]
        found = _bisect(
            lambda c: render(n_hist - 1, c),
            _capacity([last.diagnoses, last.procedures, last.medications]),
            max_tokens,
        )
        if found is not None:
            return finish(n_hist - 1, *found)
    # 3. + 4. no history, then shorten the current visit's lists
    cap = _capacity([parts.current.diagnoses, parts.current.procedures])
    found = _bisect(lambda c: render(n_hist, c), cap, max_tokens, start=0)
    if found is not None:
        return finish(n_hist, *found)
    text, n = render(n_hist, cap)
    return finish(n_hist, cap, text, n, truncated=True)


def _bisect(
    render: Callable[[int], tuple[str, int]], capacity: int, max_tokens: int, start: int = 1
) -> tuple[int, str, int] | None:
    """Smallest c in [start, capacity] whose rendering fits, or None when even `capacity` does not fit."""
    if capacity < start:
        return None
    text, n = render(capacity)
    if n > max_tokens:
        return None
    lo, hi, best = start, capacity, (capacity, text, n)
    while lo < hi:  # invariant: hi fits
        mid = (lo + hi) // 2
        text, n = render(mid)
        if n <= max_tokens:
            hi, best = mid, (mid, text, n)
        else:
            lo = mid + 1
    return best
