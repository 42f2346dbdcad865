"""Scaling of `leader predict`'s contiguity check (`leadercli.predict.streaming.SeenSubjects`) with shuffled subject ids.

Rows of N visits (1–3 per subject, each subject's rows contiguous, subjects in a random order — the worst case:
every chunk needs a lookup) are cut into chunks of whole subjects as `predict` cuts them (8,192 rows =
2 × the default batch size of 4,096) and fed to the check. Prints seconds per size; linear scaling means a
constant time per million rows. `--old` also times the previous implementation (one lookup per earlier
chunk, quadratic) at the sizes given by `--old-sizes`. `--wide` also times ids of 2^40 and more (beyond the
bool array, the sorted-runs path).

Run it:  .venv/bin/python benchmarks/bench_contiguity.py            # 1M, 2M, 5M, 10M rows
         .venv/bin/python benchmarks/bench_contiguity.py --sizes 100000 200000 --old
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from leadercli.predict.streaming import SeenSubjects

CHUNK_ROWS = 8192


class _OldSeenSubjects:
    """The check before issue 12: one sorted array per chunk, each looked up for every later chunk."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.max: int | None = None

    def add(self, subjects: np.ndarray) -> bool:
        u = np.unique(subjects)
        if self.max is not None and u[0] <= self.max:
            for part in self.parts:
                i = np.searchsorted(part, u).clip(max=len(part) - 1)
                if (part[i] == u).any():
                    return False
        self.parts.append(u)
        self.max = int(u[-1]) if self.max is None else max(self.max, int(u[-1]))
        return True


def make_rows(n_rows: int, seed: int = 0, base: int = 10_000_000) -> np.ndarray:
    """(n_rows,) int64 subject ids: contiguous per subject (1–3 rows), subjects in a shuffled order; ids from
    `base` in steps of 7 (MIMIC-IV's are 8-digit numbers)."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(1, 4, size=n_rows)
    visits = visits[: np.searchsorted(np.cumsum(visits), n_rows) + 1]
    ids = rng.permutation(len(visits)).astype(np.int64) * 7 + base  # shuffled, sparse ids
    return np.repeat(ids, visits)[:n_rows]


def chunks(rows: np.ndarray) -> list[np.ndarray]:
    """Whole-subject chunks of about CHUNK_ROWS rows (the last subject of a chunk goes to the next one)."""
    out, start = [], 0
    while start < len(rows):
        end = min(start + CHUNK_ROWS, len(rows))
        if end < len(rows):
            last = rows[end - 1]
            while end > start and rows[end - 1] == last:
                end -= 1
            end = end or min(start + CHUNK_ROWS, len(rows))
        out.append(rows[start:end])
        start = end
    return out


def time_check(cls, parts: list[np.ndarray]) -> float:
    seen = cls()
    t0 = time.perf_counter()
    for p in parts:
        if not seen.add(p):
            raise AssertionError("a contiguous input was refused")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 5_000_000, 10_000_000])
    ap.add_argument("--old", action="store_true", help="Also time the previous (quadratic) check.")
    ap.add_argument("--wide", action="store_true", help="Also time ids >= 2^40 (sorted-runs path).")
    ap.add_argument("--old-sizes", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    args = ap.parse_args()
    print(f"load before: {open('/proc/loadavg').read().split()[:3]}, cores {os.cpu_count()}")
    print(f"{'rows':>12} {'chunks':>7} {'seconds':>8} {'s per 1M rows':>14}  check")
    sizes = [("new", s) for s in args.sizes]
    sizes += [("new, ids >= 2^40", s) for s in args.sizes] if args.wide else []
    sizes += [("old", s) for s in args.old_sizes] if args.old else []
    for which, n in sizes:
        parts = chunks(make_rows(n, base=1 << 40 if "2^40" in which else 10_000_000))
        assert sum(map(len, parts)) == n
        # a seen subject again is refused (the check still works at this size)
        bad = SeenSubjects()
        assert all(bad.add(p) for p in parts[:3]) and not bad.add(parts[1][:1])
        dt = time_check(_OldSeenSubjects if which == "old" else SeenSubjects, parts)
        print(f"{n:>12,} {len(parts):>7,} {dt:>8.2f} {dt / n * 1e6:>14.3f}  {which}", flush=True)
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
