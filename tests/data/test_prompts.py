"""Teacher prompts: exact strings of the fixed reference template (leader-reference §2), length fitter."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from leadercli.data.artifact import CodeList, Vocab
from leadercli.data.prompts import TEMPLATE_VERSION, fit_prompt, render_prompt


@dataclass
class Visit:
    diagnoses: list[str]
    procedures: list[str]
    medications: list[str]


@dataclass
class Sample:
    subject_id: int
    hadm_id: int
    visits: list[Visit]
    profile: dict[str, str]
    n_visits: int


VOCAB = Vocab(
    CodeList(
        ["D9:1", "D9:2", "D9:3", "D9:4", "D9:5"], ["Dx one", "Dx two", "Dx three", "Dx four", "Dx five"]
    ),
    CodeList(["P9:1", "P9:2", "P9:3"], ["Px one", "Px two", "Px three"]),
    CodeList(["A02B", "N02B", "B01A"], ["acid drugs", "analgesics", "antithrombotic agents"]),
)
CUE = "Then, the patient should be prescribed: "


def visit(n: int) -> Visit:
    """Visit n (1-based) has its own diagnosis D9:n, procedure P9:(n%3+1) and drug (n % 3)."""
    return Visit([f"D9:{n}"], [f"P9:{n % 3 + 1}"], [["A02B", "N02B", "B01A"][n % 3]])


def sample(n: int, n_visits: int | None = None, profile: dict[str, str] | None = None) -> Sample:
    visits = [visit(k) for k in range(1, n + 1)]
    return Sample(7, 70, visits, profile or {}, n_visits or n)


def test_template_version() -> None:
    assert TEMPLATE_VERSION == "leader-v1-fixed"


def test_single_visit_exact() -> None:
    assert render_prompt(sample(1), VOCAB) == (
        "The patient has 0 times ICU visits. \n  In this visit, the patient has diagnosis: Dx one; "
        "procedures: Px two. " + CUE
    )


def test_three_visits_history_shows_its_own_diagnoses() -> None:
    expected = (
        "The patient has 2 times ICU visits. \n "
        "In 1 visit, the patient had diagnosis: Dx one; procedures: Px two. "
        "The patient was prescribed drugs: analgesics. \n"
        "In 2 visit, the patient had diagnosis: Dx two; procedures: Px three. "
        "The patient was prescribed drugs: antithrombotic agents. \n"
        " In this visit, the patient has diagnosis: Dx three; procedures: Px one. " + CUE
    )
    assert render_prompt(sample(3), VOCAB) == expected


def test_five_visits_keep_last_three_history_with_absolute_index() -> None:
    text = render_prompt(sample(5), VOCAB)
    assert text.startswith(
        "The patient has 4 times ICU visits. \n In 2 visit, the patient had diagnosis: Dx two;"
    )
    assert "In 1 visit" not in text
    assert "In 3 visit, the patient had diagnosis: Dx three; procedures: Px one." in text
    assert "In 4 visit, the patient had diagnosis: Dx four; procedures: Px two. " in text
    assert text.endswith(
        " \n In this visit, the patient has diagnosis: Dx five; procedures: Px three. " + CUE
    )
    assert text.count("the patient had diagnosis") == 3


def test_truncated_sample_counts_all_previous_visits() -> None:
    # a sample holding only its 2 most recent visits of 6: indices continue from the patient's count
    s = Sample(1, 2, [visit(1), visit(2)], {}, n_visits=6)
    text = render_prompt(s, VOCAB)
    assert text.startswith(
        "The patient has 5 times ICU visits. \n In 5 visit, the patient had diagnosis: Dx one;"
    )


def test_history_visits_option() -> None:
    assert "In " not in render_prompt(sample(3), VOCAB, history_visits=0).split("\n")[1].split("In this")[0]
    text = render_prompt(sample(3), VOCAB, history_visits=1)
    assert "In 1 visit" not in text and "In 2 visit" in text


def test_pronouns() -> None:
    assert "In this visit, he has diagnosis: Dx one;" in render_prompt(sample(1), VOCAB, pronoun="he")
    assert "In this visit, she has diagnosis: Dx one;" in render_prompt(sample(1), VOCAB, pronoun="she")
    with pytest.raises(ValueError):
        render_prompt(sample(1), VOCAB, pronoun="they")


def test_profile_sentence_in_field_order() -> None:
    prof = {"insurance": "Medicare", "language": "ENGL", "marital_status": "MARRIED", "age_group": "60-69"}
    s = sample(1, profile=prof)
    assert render_prompt(s, VOCAB) == render_prompt(sample(1), VOCAB)  # off by default, as the reference
    assert render_prompt(s, VOCAB, include_profile=True) == (
        "The patient's insurance type is Medicare, language is ENGL, marital status is MARRIED, "
        "age group is 60-69. The patient has 0 times ICU visits. \n  In this visit, the patient has "
        "diagnosis: Dx one; procedures: Px two. " + CUE
    )
    weird = sample(1, profile={"blood_type": "O"})
    assert render_prompt(weird, VOCAB, include_profile=True).startswith("The patient's blood type is O. The")


def test_lists_joined_and_untitled_codes_dropped_but_counted() -> None:
    s = Sample(
        1,
        2,
        [
            Visit(["D9:1", "D9:999", "D9:2"], ["P9:7"], ["A02B", "Z99Z", "B01A"]),
            Visit(["D10:X", "D9:3"], ["P9:1", "P9:2"], ["N02B"]),
        ],
        {},
        2,
    )
    text = render_prompt(s, VOCAB)
    assert text == (
        "The patient has 1 times ICU visits. \n In 1 visit, the patient had diagnosis: Dx one, Dx two; "
        "procedures: . The patient was prescribed drugs: acid drugs, antithrombotic agents. \n "
        "In this visit, the patient has diagnosis: Dx three; procedures: Px one, Px two. " + CUE
    )
    _, stats = fit_prompt(s, VOCAB, lambda t: len(t.split()), 10_000)
    assert stats["untitled_codes"] == 4  # D9:999, P9:7, Z99Z, D10:X (the target's drugs are never rendered)


def words(text: str) -> int:
    return len(text.split())


def long_sample() -> Sample:
    """Three visits: history visits with 4 diagnoses each, target with 5 diagnoses and 3 procedures."""
    dx = ["D9:1", "D9:2", "D9:3", "D9:4"]
    visits = [Visit(list(dx), ["P9:1"], ["A02B"]), Visit(list(dx), ["P9:1", "P9:2"], ["A02B", "N02B"])]
    visits.append(Visit(dx + ["D9:5"], ["P9:1", "P9:2", "P9:3"], []))
    return Sample(1, 2, visits, {}, 3)


def test_fit_prompt_no_change_when_short() -> None:
    s = long_sample()
    text, stats = fit_prompt(s, VOCAB, words, 10_000)
    assert text == render_prompt(s, VOCAB)
    assert stats == {
        "history_dropped": 0,
        "codes_dropped": 0,
        "truncated": False,
        "tokens": words(text),
        "untitled_codes": 0,
    }


def test_fit_prompt_drops_oldest_history_first() -> None:
    s = long_sample()
    full = words(render_prompt(s, VOCAB))
    text, stats = fit_prompt(s, VOCAB, words, full - 1)
    assert stats["history_dropped"] == 1 and stats["codes_dropped"] == 0 and not stats["truncated"]
    assert (
        "In 1 visit" not in text
        and "In 2 visit, the patient had diagnosis: Dx one, Dx two, Dx three, Dx four;" in text
    )
    assert text.startswith("The patient has 2 times ICU visits.")  # the count stays true


def test_fit_prompt_then_shortens_history_lists_then_current() -> None:
    s = long_sample()
    one_hist = render_prompt(s, VOCAB, drop=(1, 0))
    # removing one diagnosis ("Dx four" = 2 words, with the comma attached to "three,") saves 2 words
    text, stats = fit_prompt(s, VOCAB, words, words(one_hist) - 2)
    assert (stats["history_dropped"], stats["codes_dropped"]) == (1, 1)
    assert (
        "In 2 visit, the patient had diagnosis: Dx one, Dx two, Dx three; procedures: Px one, Px two." in text
    )
    # history lists down to 1 code each: dx 4→1 (3 codes), procedures 2→1, drugs 2→1 → 5 codes
    minimal_hist = render_prompt(s, VOCAB, drop=(1, 5))
    assert (
        "In 2 visit, the patient had diagnosis: Dx one; procedures: Px one. The patient was prescribed "
        "drugs: acid drugs. \n" in minimal_hist
    )
    # a 6th code would come from the current visit's longest list (history lists are exhausted)
    assert "has diagnosis: Dx one, Dx two, Dx three, Dx four; procedures" in render_prompt(
        s, VOCAB, drop=(1, 6)
    )
    text, stats = fit_prompt(s, VOCAB, words, words(minimal_hist))
    assert (stats["history_dropped"], stats["codes_dropped"]) == (1, 5)
    assert text == minimal_hist
    # one word fewer: the last history visit goes, the current visit stays whole
    text, stats = fit_prompt(s, VOCAB, words, words(minimal_hist) - 1)
    assert (stats["history_dropped"], stats["codes_dropped"]) == (2, 0)
    assert text == render_prompt(s, VOCAB, history_visits=0)
    # then the current visit's longest list (diagnoses, 5) shrinks first, then procedures (ties → diagnoses)
    no_hist = words(text)
    text, stats = fit_prompt(s, VOCAB, words, no_hist - 4)
    assert (stats["history_dropped"], stats["codes_dropped"]) == (2, 2)
    assert "has diagnosis: Dx one, Dx two, Dx three; procedures: Px one, Px two, Px three. " + CUE in text
    text, stats = fit_prompt(s, VOCAB, words, no_hist - 8)
    assert (stats["history_dropped"], stats["codes_dropped"]) == (2, 4)
    assert "has diagnosis: Dx one, Dx two; procedures: Px one, Px two. " + CUE in text
    assert text == render_prompt(s, VOCAB, drop=(2, 4))


def test_fit_prompt_minimal_still_too_long_is_marked_truncated() -> None:
    s = long_sample()
    text, stats = fit_prompt(s, VOCAB, words, 5)
    assert (
        stats["truncated"] and stats["history_dropped"] == 2 and stats["codes_dropped"] == 6
    )  # 5→1 dx, 3→1 px
    assert text == (
        "The patient has 2 times ICU visits. \n  In this visit, the patient has diagnosis: Dx one; "
        "procedures: Px one. " + CUE
    )
    assert stats["tokens"] == words(text)
