"""MEDS events → visits and their codes, streamed per subject group (the reader behind `data/meds.py`).

Two passes over the shards, each holding one group of subjects at a time:

1. `survey` reads `subject_id` and `code` of every shard: the distinct codes and their counts (classified once
   by the `[meds]` patterns, `classify_codes`) and each shard's subjects. Shards that share a subject are read
   together; other shards are batched up to `GROUP_EVENTS` matched events, and a larger shard is read in
   subject ranges. A subject's events are therefore always in one group.
2. `read_group` reads the matched events of one group lean (a code becomes a one-byte kind and a value id,
   `code_lookup`), gives each timed event its visit (`assign_visits`) and reduces them to per-visit frames keyed
   by value id: diagnoses and procedures (file order), NDC drugs (count), ATC drugs, and the few admission /
   discharge / profile events; `Parts.frames` turns the ids into text at the end. Memory: one group's events
   (about 35 bytes each) plus the visit × code frames, about that of the CSV layouts (benchmarks/README.md).

Visits (`assign_visits`): an event that carries the visit column (`hadm_id`) keeps it. An event without one is
given the visit whose admission → discharge window holds its time, when other events of the subject carry
ids (the public MIMIC-IV MEDS ETL writes drug events without `hadm_id`): a visit's window runs from its
admission event to its discharge event (or over its own events where either is missing; a zero-length
window holds the events at that instant); where windows overlap, the latest admission wins. A subject without
any id (or data without the column) gets windows from each admission event to the next discharge event, the
last one open, numbered `subject_id · 1000 + k`. Events outside every window belong to no visit (counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from leadercli.data.codes import clean_code, prefixed
from leadercli.data.mapping import SCIENTIFIC
from leadercli.errors import InputError

PROFILE_CODES = ("insurance", "language", "marital_status", "race")
SMALL_KINDS = ("admission", "discharge", "gender", "birth", *PROFILE_CODES)
DRUG_KINDS = ("ndc", "atc")
GROUP_EVENTS = 4_000_000  # matched events held at once (about 0.15 GiB, 0.5 GiB while read)
# the code rules, in order (first match wins): kind, pattern setting, the group giving the value, version group
RULES = (
    ("diagnoses", "diagnosis", "code", "version"),
    ("procedures", "procedure", "code", "version"),
    ("atc", "medication_atc", "atc", None),
    ("ndc", "medication_ndc", "ndc", None),
    ("admission", "admission", "admission_type", None),
    ("discharge", "discharge", None, None),
    ("gender", "gender", "value", None),
    ("birth", "birth", None, None),
    *[(f, f, "value", None) for f in PROFILE_CODES],
)
KIND = pl.Enum([r[0] for r in RULES])  # an event's kind, one byte a row


@dataclass
class Shard:
    path: Path
    name: str  # the path under the MEDS root (data/train/0.parquet): what messages name
    schema: dict[str, pl.DataType]
    rows: int


@dataclass
class Group:
    shards: list[Shard]
    subjects: tuple[int, int] | None = None  # an inclusive subject-id range inside one large shard


@dataclass
class Survey:
    codes: pl.DataFrame  # code, n (events)
    groups: list[Group]
    events: int
    subjects: pl.DataFrame  # subject_id of every event


@dataclass
class Lookup:
    codes: pl.DataFrame  # code → kind (KIND), vid: the join that tags each event
    values: pl.Series  # vid → value (text): one id per (kind, value)
    admission: pl.DataFrame  # code: the admission codes (their events carry the profile columns)


def code_lookup(classified: pl.DataFrame) -> Lookup:
    """The classified codes (`classify_codes`) as the ids the events are read with."""
    kv = ["kind", "value"]
    values = classified.select(kv).unique().sort(kv, nulls_last=True).with_row_index("vid")
    codes = classified.select("code", *kv).join(values, on=kv, nulls_equal=True)
    codes = codes.select("code", pl.col("kind").cast(KIND), "vid")
    return Lookup(codes, values["value"], codes.filter(pl.col("kind") == "admission").select("code"))


@dataclass
class Parts:
    """What the groups add up to: the small events (with text values) and per-visit frames keyed by value
    id (`vid`) until `frames` turns them into the reader's tables."""

    small: list[pl.DataFrame] = field(default_factory=list)
    dx: list[pl.DataFrame] = field(default_factory=list)
    px: list[pl.DataFrame] = field(default_factory=list)
    rx: list[pl.DataFrame] = field(default_factory=list)
    atc: list[pl.DataFrame] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, n: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + int(n)

    def frames(self, values: pl.Series) -> tuple[pl.DataFrame, ...]:
        """Diagnoses and procedures (subject_id, hadm_id, code, seq), NDC drugs (…, ndc categorical, n) and
        ATC drugs (…, atc3), each released from the parts as it is built."""

        def text(key: str, name: str, vals: pl.Series) -> pl.DataFrame:
            out = pl.concat(getattr(self, key), how="vertical_relaxed", rechunk=False)
            setattr(self, key, [])
            return out.with_columns(vals.gather(out["vid"]).alias(name)).drop("vid")

        dx, px = (
            text(k, "code", values).select("subject_id", "hadm_id", "code", pl.col("seq").cast(pl.Int64))
            for k in ("dx", "px")
        )
        rx = text("rx", "ndc", values.cast(pl.Categorical)).select("subject_id", "hadm_id", "ndc", "n")
        atc = text("atc", "atc3", values.str.slice(0, 4)).unique()
        return dx, px, rx, atc


# -- shards -----------------------------------------------------------------------------------------------------
def check_shard(path: Path, name: str, visit_column: str) -> Shard:
    """The shard's schema, checked: subject_id integer, time a timestamp or date, code text; the visit column
    (when present) integer. Every shard is checked, not only the first."""
    try:
        schema = dict(pl.read_parquet_schema(path))
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(
            f"{name} is not a readable parquet file ({type(exc).__name__})",
            "Re-export the MEDS data (or remove the file from data/)",
        ) from None
    for col in ("subject_id", "time", "code"):
        if col not in schema:
            raise InputError(
                f"{name}: column '{col}' is missing (columns: {', '.join(list(schema)[:8])}): not a MEDS data shard",
                "MEDS data shards need subject_id, time and code; remove other files from data/",
            )
    want = {
        "subject_id": (lambda t: t.is_integer(), "an integer (int64)"),
        "time": (lambda t: isinstance(t, pl.Datetime | pl.Date | pl.Null), "a timestamp"),
        "code": (lambda t: t in (pl.String, pl.Categorical) or isinstance(t, pl.Enum), "text (string)"),
    }
    if visit_column in schema:
        want[visit_column] = (lambda t: t.is_integer() or t == pl.Null, "an integer (meds.visit_column)")
    for col, (ok, what) in want.items():
        if not ok(schema[col]):
            raise InputError(
                f"{name}: column '{col}' has type {schema[col]}, expected {what}",
                "Re-export the shard with the MEDS types (every shard must have the same schema)",
            )
    if schema["code"] == pl.Null and rows:
        raise InputError(f"{name}: column 'code' is empty (every value null)", "Re-export the MEDS data")
    return Shard(path, name, schema, rows)


def _scan(shard: Shard, extra: tuple[str, ...], visit_column: str) -> pl.LazyFrame:
    """One shard's columns in the reader's types (a missing extra column is null)."""
    time = pl.col("time")
    if isinstance(shard.schema["time"], pl.Datetime) and shard.schema["time"].time_zone:
        time = time.dt.replace_time_zone(None)  # wall-clock times, as the other shards'
    cols = [
        pl.col("subject_id").cast(pl.Int64),
        time.cast(pl.Datetime("us")),
        pl.col("code").cast(pl.String),
    ]
    for c in extra:
        name = "hadm_id" if c == visit_column else c
        typ = pl.Int64 if c == visit_column else pl.String
        cols.append((pl.col(c) if c in shard.schema else pl.lit(None)).cast(typ).alias(name))
    return pl.scan_parquet(shard.path).select(cols)


def _collect(queries: list[pl.LazyFrame], where: str) -> list[pl.DataFrame]:
    try:
        return pl.collect_all(queries, engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(
            f"{where} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})",
            "Check the parquet file (types: subject_id int64, time timestamp, code string)",
        ) from None


# -- pass 1 -----------------------------------------------------------------------------------------------------
def survey(shards: list[Shard], pat) -> tuple[Survey, pl.DataFrame]:
    """The distinct codes (classified) and the groups of shards to read together."""
    code_parts, subject_parts = [], []
    for i, shard in enumerate(shards):
        lf = _scan(shard, (), pat.visit_column)
        codes, subjects = _collect(
            [lf.group_by("code").len("n"), lf.group_by("subject_id").len("rows")], shard.name
        )
        if shard.rows and codes.filter(pl.col("code").is_not_null())["n"].sum() == 0:
            raise InputError(
                f"{shard.name}: column 'code' is empty (every value null)", "Re-export the MEDS data"
            )
        if subjects["subject_id"].null_count():
            raise InputError(
                f"{shard.name}: column 'subject_id' has empty values", "Every MEDS event needs a subject_id"
            )
        code_parts.append(codes.with_columns(pl.lit(i).alias("shard")))
        subject_parts.append(subjects.with_columns(pl.lit(i, dtype=pl.Int64).alias("shard")))
    per_shard = pl.concat(code_parts).drop_nulls("code")
    codes = per_shard.group_by("code").agg(pl.col("n").sum()).sort("code")
    classified = classify_codes(codes, pat)
    _check_scientific(shards, per_shard, classified)
    matched = (
        per_shard.join(classified.select("code"), on="code", how="semi")
        .group_by("shard")
        .agg(pl.col("n").sum())
    )
    subjects = pl.concat(subject_parts)
    groups = _groups(shards, subjects, dict(matched.iter_rows()))
    every = subjects.select("subject_id").unique()
    return Survey(codes, groups, int(per_shard["n"].sum()), every), classified


def _check_scientific(shards: list[Shard], per_shard: pl.DataFrame, classified: pl.DataFrame) -> None:
    """NDCs that went through a float (6.1e+10) lost their digits: named with the first shard holding them."""
    sci = classified.filter((pl.col("kind") == "ndc") & pl.col("value").str.contains(SCIENTIFIC))
    if sci.height:
        hit = per_shard.join(sci.select("code", "value"), on="code").sort("shard", "value")
        first = hit.filter(pl.col("shard") == hit["shard"][0])
        raise InputError(
            f"{shards[hit['shard'][0]].name}: {int(first['n'].sum()):,} drug events carry an NDC in scientific "
            f"notation (e.g. {first['value'][0]!r}): its digits were lost when the NDC was stored as a float",
            "Re-export the data with the NDC as text or an integer",
        )


def _groups(shards: list[Shard], subjects: pl.DataFrame, matched: dict[int, int]) -> list[Group]:
    """Shards that share a subject form one component; components are batched up to GROUP_EVENTS matched
    events, and a component above it (one large shard) is split into subject ranges."""
    parent = list(range(len(shards)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    shared = (
        subjects.group_by("subject_id").agg(pl.col("shard").unique()).filter(pl.col("shard").list.len() > 1)
    )
    for ids in shared["shard"].to_list():
        for j in ids[1:]:
            parent[root(j)] = root(ids[0])
    components: dict[int, list[int]] = {}
    for i in range(len(shards)):
        components.setdefault(root(i), []).append(i)
    groups, batch, size = [], [], 0
    for members in components.values():
        n = sum(matched.get(i, 0) for i in members)
        if n > GROUP_EVENTS:
            groups += _ranges(
                [shards[i] for i in members], subjects.filter(pl.col("shard").is_in(members)), n
            )
            continue
        if batch and size + n > GROUP_EVENTS:
            groups.append(Group(batch))
            batch, size = [], 0
        batch += [shards[i] for i in members]
        size += n
    if batch:
        groups.append(Group(batch))
    return groups


def _ranges(shards: list[Shard], subjects: pl.DataFrame, matched: int) -> list[Group]:
    per = subjects.group_by("subject_id").agg(pl.col("rows").sum()).sort("subject_id")
    k = -(-matched // GROUP_EVENTS)
    part = (pl.col("rows").cum_sum() * k // (pl.col("rows").sum() + 1)).alias("part")
    bounds = (
        per.with_columns(part)
        .group_by("part")
        .agg(pl.col("subject_id").min().alias("lo"), pl.col("subject_id").max().alias("hi"))
    )
    return [Group(shards, (lo, hi)) for _, lo, hi in bounds.sort("part").iter_rows()]


def classify_codes(codes: pl.DataFrame, pat) -> pl.DataFrame:
    """Each distinct code → (kind, value, version): diagnoses/procedures get the prefixed code (`D10:I10`) as
    value; codes that match no pattern are left out."""
    c = pl.col("code")
    kind = pl.lit(None, dtype=pl.String)
    value = pl.lit(None, dtype=pl.String)
    version = pl.lit(None, dtype=pl.Int64)
    # first matching rule wins: build the when-chains from the last rule to the first
    for name, setting, group, vgroup in reversed(RULES):
        regex = getattr(pat, setting)
        hit = c.str.contains(regex)
        v = c.str.extract(regex, 0) if group is None else _group(c, regex, group)
        kind = pl.when(hit).then(pl.lit(name)).otherwise(kind)
        value = pl.when(hit).then(v).otherwise(value)
        if vgroup is not None:
            version = (
                pl.when(hit).then(_group(c, regex, vgroup).cast(pl.Int64, strict=False)).otherwise(version)
            )
    out = codes.with_columns(kind.alias("kind"), value.alias("value"), version.alias("version"))
    is_icd = pl.col("kind").is_in(["diagnoses", "procedures"])
    unusable = is_icd & (pl.col("version").is_null() | (clean_code(pl.col("value")).fill_null("") == ""))
    out = out.filter(pl.col("kind").is_not_null() & ~unusable)
    code = prefixed(pl.col("kind"), pl.col("version"), pl.col("value"))
    return out.with_columns(pl.when(is_icd).then(code).otherwise(pl.col("value")).alias("value"))


def _group(c: pl.Expr, regex: str, name: str) -> pl.Expr:
    """The named group `name` of `regex` (polars' own regex engine, the one that runs the pattern); null for
    every code when the pattern has no such group (`admission_type` is optional)."""
    if name not in pl.select(pl.lit("").str.extract_groups(regex)).to_series().struct.fields:
        return pl.lit(None, dtype=pl.String)
    return c.str.extract_groups(regex).struct.field(name)


# -- pass 2 -----------------------------------------------------------------------------------------------------
def read_group(group: Group, look: Lookup, extra: tuple[str, ...], pat, parts: Parts) -> None:
    """Read one group's matched events and add its per-visit frames to `parts`. The events are held lean
    (subject, time, visit, row, kind as one byte, value id: about 35 bytes each); the profile columns are read
    for the admission events only, and values become text only in the small frames and in `Parts.frames`."""
    frames = [_scan(s, extra, pat.visit_column) for s in group.shards]
    lf = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]
    if group.subjects is not None:
        lf = lf.filter(pl.col("subject_id").is_between(*group.subjects))
    lf = lf.with_row_index("row")
    profile = [c for c in extra if c != pat.visit_column]
    queries = [lf.drop(profile).join(look.codes.lazy(), on="code").drop("code")]
    if profile:  # the admission events' own insurance, language, …
        queries.append(lf.join(look.admission.lazy(), on="code", how="semi").select("row", *profile))
    try:
        ev, *adm = pl.collect_all(queries, engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        for s in group.shards:  # name the shard that fails on its own (the error path only)
            _collect([_scan(s, extra, pat.visit_column)], s.name)
        names = ", ".join(s.name for s in group.shards[:3])
        raise InputError(
            f"the shards {names} cannot be read together ({type(exc).__name__})", "Re-export the MEDS data"
        ) from None
    if "hadm_id" not in ev.columns:
        ev = ev.with_columns(pl.lit(None, dtype=pl.Int64).alias("hadm_id"))
    kind, hadm = pl.col("kind"), pl.col("hadm_id")
    drug = kind.is_in(list(DRUG_KINDS))
    drugs, with_id = ev.select(drug.sum().alias("a"), (drug & hadm.is_not_null()).sum().alias("b")).row(0)
    parts.add("drug_events", drugs)
    parts.add("drug_events_with_id", with_id)
    ev = assign_visits(ev, parts)
    parts.add("drug_events_in_visits", ev.select((drug & hadm.is_not_null()).sum()).item())
    small = ev.filter(kind.is_in(list(SMALL_KINDS))).sort("row")
    small = small.with_columns(look.values.gather(small["vid"]).alias("value"))
    if adm:
        small = small.join(adm[0], on="row", how="left", maintain_order="left")
    parts.small.append(small.drop("row", "vid"))
    keyed = ev.lazy().filter(hadm.is_not_null())
    visit = ["subject_id", "hadm_id", "vid"]
    dx, px, rx, atc = pl.collect_all(
        [
            *[
                keyed.filter(kind == k).group_by(visit).agg(pl.col("row").min().alias("seq"))
                for k in ("diagnoses", "procedures")
            ],
            keyed.filter(kind == "ndc").group_by(visit).agg(pl.len().cast(pl.UInt32).alias("n")),
            keyed.filter(kind == "atc").select(visit).unique(),
        ],
        engine="streaming",
    )
    parts.dx.append(dx)
    parts.px.append(px)
    parts.rx.append(rx)
    parts.atc.append(atc)


def assign_visits(ev: pl.DataFrame, parts: Parts) -> pl.DataFrame:
    """`hadm_id` for every timed event (see the module docstring); static events keep theirs (usually none).
    Only the events without an id are joined to the windows; the rest of `ev` is not copied."""
    t, kind, hadm = pl.col("time"), pl.col("kind"), pl.col("hadm_id")
    loose_mask = t.is_not_null() & hadm.is_null()
    if not ev.select(loose_mask.any()).item():
        parts.add("events_outside_visits", 0)
        return ev
    timed = ev.lazy().filter(t.is_not_null())
    named = (
        timed.filter(hadm.is_not_null())
        .group_by(["subject_id", "hadm_id"])
        .agg(
            pl.coalesce(t.filter(kind == "admission").min(), t.min()).alias("start"),
            pl.coalesce(t.filter(kind == "discharge").max(), t.max()).alias("end"),
        )
    )
    with_id = timed.filter(hadm.is_not_null()).select("subject_id").unique()
    bounds = (
        timed.filter(kind.is_in(["admission", "discharge"]))
        .join(with_id, on="subject_id", how="anti")
        .select("subject_id", "time", "kind")
    )
    loose = ev.lazy().with_row_index("pos").filter(loose_mask).select("pos", "subject_id", "time")
    named, bounds, loose = pl.collect_all([named, bounds, loose])
    windows = pl.concat([named, _windows(bounds)], how="vertical_relaxed").with_columns(
        pl.when(pl.col("end") < pl.col("start")).then(pl.col("start")).otherwise(pl.col("end")).alias("end")
    )
    placed = _place(loose, windows)
    parts.add("events_outside_visits", placed["hadm_id"].null_count())
    placed = placed.filter(hadm.is_not_null())
    return ev.with_columns(ev["hadm_id"].clone().scatter(placed["pos"], placed["hadm_id"]))


def _windows(ev: pl.DataFrame) -> pl.DataFrame:
    """Subjects without visit ids: each admission event to the first discharge at or after it (end null =
    open), numbered per subject in time order."""
    adm = ev.filter(pl.col("kind") == "admission").select("subject_id", pl.col("time").alias("start"))
    adm = (
        adm.unique()
        .sort(["subject_id", "start"])
        .with_columns(
            (pl.col("subject_id") * 1000 + pl.int_range(pl.len()).over("subject_id")).alias("hadm_id")
        )
    )
    dis = (
        ev.filter(pl.col("kind") == "discharge").select("subject_id", pl.col("time").alias("end")).sort("end")
    )
    win = adm.sort("start").join_asof(
        dis, left_on="start", right_on="end", by="subject_id", strategy="forward", check_sortedness=False
    )
    return win.select("subject_id", "hadm_id", "start", "end")


def _place(loose: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """Each event (pos, subject_id, time) → the visit whose window holds it (the latest start wins), else
    null."""
    win = windows.sort("start")
    got = loose.sort("time").join_asof(
        win, left_on="time", right_on="start", by="subject_id", strategy="backward", check_sortedness=False
    )
    inside = pl.col("hadm_id").is_not_null() & (pl.col("end").is_null() | (pl.col("time") <= pl.col("end")))
    hit = got.filter(inside).select("pos", "hadm_id")
    miss = got.filter(~inside).drop("hadm_id", "start", "end")
    if miss.height:  # nested or overlapping windows: an earlier, longer window may still hold the event
        pairs = miss.join(win, on="subject_id", how="inner").filter(
            (pl.col("time") >= pl.col("start"))
            & (pl.col("end").is_null() | (pl.col("time") <= pl.col("end")))
        )
        best = pairs.sort("start").group_by("pos").agg(pl.col("hadm_id").last())
        miss = miss.join(best, on="pos", how="left")
    else:
        miss = miss.with_columns(pl.lit(None, dtype=pl.Int64).alias("hadm_id"))
    return pl.concat([hit, miss.select(hit.columns)], how="vertical_relaxed")
