"""The report's sample explanations (issue 24 item 6): for a few test patients, their top drugs with the codes
that explain them (occlusion through the run's `Scorer`, `leadercli.explain`), so that a reader sees what the
model's recommendations rest on.

Patients are drawn with the report's seed; their ids are shown only as a keyed hash (HMAC-SHA256 with a random
key made for this report and never stored, so the hash cannot be traced back to a subject id, not even by
trying every id). Codes and titles are shown; no dates, no profile values.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import numpy as np
import torch

from leadercli.explain import Explainer

PATIENTS = 5  # test patients shown
TOP_DRUGS = 3  # drugs shown per patient
CODES = 3  # explaining codes per drug


def explain_patients(
    scorer,
    samples: list,
    y_true: np.ndarray,
    seed: int,
    n: int = PATIENTS,
    top: int = TOP_DRUGS,
    k: int = CODES,
) -> dict:
    """`n` test samples drawn with `seed` → {"run", "k", "patients": [{"id", "n_visits", "drugs": [...]}]}; each
    drug: atc3, name, score, given (in the true set), codes [{code, kind, title, visit, contribution}]."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(samples), size=min(n, len(samples)), replace=False))
    chosen = [samples[i] for i in pick]
    probs = torch.from_numpy(np.asarray(scorer.score_samples(chosen), np.float32))  # (n, M)
    top = min(top, probs.shape[1])
    ix = torch.topk(probs, top, dim=1).indices.numpy()  # (n, top)
    row_patient = np.repeat(np.arange(len(chosen)), top)
    cols = Explainer(scorer, k).samples(probs, chosen, None, row_patient, ix.ravel())
    key = secrets.token_bytes(16)
    names = scorer.vocab.medications.titles
    out = []
    for p, s in enumerate(chosen):
        drugs = []
        for j in range(top):
            r, m = p * top + j, int(ix[p, j])
            codes = [
                {
                    "code": cols["explain_codes"][r, c],
                    "kind": cols["explain_kinds"][r, c],
                    "title": cols["explain_titles"][r, c],
                    "visit": cols["explain_visits"][r, c],
                    "contribution": float(cols["explain_contributions"][r, c]),
                }
                for c in range(cols["explain_codes"].shape[1])
                if cols["explain_codes"][r, c] is not None
            ]
            drugs.append(
                {
                    "atc3": scorer.labels[m],
                    "name": names[m],
                    "score": float(probs[p, m]),
                    "given": bool(y_true[pick[p], m]),
                    "codes": codes,
                }
            )
        digest = hmac.new(key, str(s.subject_id).encode(), hashlib.sha256).hexdigest()[:12]
        out.append({"id": digest, "n_visits": int(s.n_visits), "drugs": drugs})
    return {"k": k, "top_drugs": top, "patients": out}


def explained_rows(block: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per patient, for the report's tables."""
    out = []
    for i, p in enumerate(block["patients"], 1):
        rows = []
        for d in p["drugs"]:
            why = "; ".join(
                f"{c['code']} {c['title']}".strip()
                + (" (history)" if c["visit"] == "history" else "")
                + f" +{c['contribution']:.3f}"
                for c in d["codes"]
            )
            rows.append(
                [f"{d['atc3']} {d['name']}", f"{d['score']:.3f}", "yes" if d["given"] else "no", why or "—"]
            )
        visits = f"{p['n_visits']} visit" + ("s" if p["n_visits"] != 1 else "")
        out.append(
            (f"Patient {i} (id hash {p['id']}, {visits})", ["drug", "score", "given", "explained by"], rows)
        )
    return out


def explained_blocks(report: dict) -> list[tuple]:
    """The section's blocks for `render.blocks` (none when the report has no explanations)."""
    ex = report.get("explained")
    if not ex or not ex.get("patients"):
        return []
    out: list[tuple] = [
        ("h2", "Why these drugs: sample patients"),
        (
            "p",
            f"{len(ex['patients'])} test patients drawn with the report's seed. For the top {ex['top_drugs']} "
            f"drugs of {ex['run']} (the learned run with the best PRAUC), the {ex['k']} codes whose removal "
            "lowers the drug's score most, with the score drop (occlusion, as `leader predict --explain` "
            "computes it); '(history)' marks a code of an earlier visit; 'given' says whether the patient got "
            "the drug. Ids are keyed hashes that cannot be traced back to a subject.",
        ),
    ]
    for title, header, rows in explained_rows(ex):
        out += [("h3", title), ("table", header, rows)]
    return out
