"""The MCM paper's six claims, decided on one benchmark sweep by paired comparisons (pure: rows in, verdicts out).

Every trial of the sweep evaluated its students from the same noise rows and kept their features
(`eval.keep_rows`); so did the reference and the teacher. A comparison of two points is the paired bootstrap of
their FD difference (metrics/paired.py): rows shared by both, training seeds paired by `train.seed` and redrawn
together. Each comparison comes out "as claimed", "against" (the interval excludes 0 on the other side) or
"undecided" (no difference detected); a claim holds when its comparisons say so, fails when one goes against it,
and is undecided otherwise (docs/results.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from multistep.metrics.paired import Difference, Estimate, fd, interval, paired_difference

log = logging.getLogger(__name__)  # progress: each row and claim as it is decided

Points = dict[tuple[str, int], dict[int, np.ndarray]]  # (label, student steps) -> {train.seed: kept feature rows}
TEACHER = "teacher_addim"  # the paper's "Diffusion (aDDIM), 512 steps" row: the sweep's largest teacher point


@dataclass
class Comparison:
    a: tuple[str, int]
    b: tuple[str, int]
    want: str  # "lower": a < b; "not higher": a <= b; "within": a - b <= margin; "compare": no side claimed
    diff: Difference
    margin: float = 0.0  # "within": how much higher a may be (10% of b's value)

    @property
    def outcome(self) -> str:
        d = self.diff
        if self.want == "compare":  # no side claimed: which one is lower, if either
            return (f"{self.a[0]} lower" if d.value < 0 else f"{self.b[0]} lower") if d.detected else "no difference"
        if self.want == "within":
            return (
                "as claimed"
                if d.hi <= self.margin or not d.detected
                else "against"
                if d.lo > self.margin
                else "undecided"
            )
        if d.detected:
            return "as claimed" if d.value < 0 else "against"
        return "as claimed" if self.want == "not higher" else "undecided"

    def describe(self) -> str:
        a, b = (f"{lb} S={s}" for lb, s in (self.a, self.b))
        extra = f"; margin 10% of {b}: {self.margin:.4g}" if self.want == "within" else ""
        return f"{self.diff.describe(a, b)}{extra} -> {self.outcome}"


@dataclass
class Verdict:
    number: int
    claim: str
    source: str  # where in the paper
    comparisons: list[Comparison] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # points the sweep did not measure

    @property
    def verdict(self) -> str:
        if self.missing and not self.comparisons:
            return "not measured"
        outcomes = [c.outcome for c in self.comparisons]
        if "against" in outcomes:
            return "fails"
        return "holds" if all(o == "as claimed" for o in outcomes) and not self.missing else "undecided"


# number, claim, paper source, comparisons as (a, b, want)
def _claims(fixed: list[str], teacher: tuple[str, int]) -> list[tuple[int, str, str, list[tuple]]]:
    return [
        (1, "MCD's FD falls as S grows (1, 2, 4, 8)", "Table 1", [(("mcd", 2 * s), ("mcd", s), "lower") for s in (1, 2, 4)]),
        (2, f"8-step MCD reaches the {teacher[1]}-step aDDIM teacher (within 10% or the interval)", "Table 1, abstract", [(("mcd", 8), teacher, "within")]),
        (3, "MCD <= TRACT and PD at equal S", "Tables 3, 5", [(("mcd", s), (b, s), "not higher") for b in ("tract", "pd") for s in (1, 2, 4, 8)]),
        (4, "annealed teacher steps beat every fixed count (S = 4)", "Table 2", [(("mcd", 4), (f, 4), "lower") for f in fixed]),
        (5, "the aDDIM teacher step beats DDIM from S = 4", "Table 4", [(("mcd", s), ("mcd_ddim", s), "lower") for s in (4, 8)]),
        (6, "CD <= CT at S = 1", "Table 1", [(("mcd", 1), ("mct", 1), "not higher")]),
    ]  # fmt: skip


def _paired(points: Points, a, b) -> tuple[list, list] | None:
    """The two points' rows of the training seeds both have (a teacher point: the same rows for every seed)."""
    pa, pb = points.get(a), points.get(b)
    if not pa or not pb:
        return None
    if b[0].startswith("teacher"):  # one set of rows, paired with every seed of a
        seeds = sorted(pa)
        return [pa[k] for k in seeds], [next(iter(pb.values()))] * len(seeds)
    seeds = sorted(set(pa) & set(pb))
    return ([pa[k] for k in seeds], [pb[k] for k in seeds]) if seeds else None


def decide(points: Points, ref: np.ndarray, n_boot: int = 200, seed: int = 0) -> list[Verdict]:
    """The six verdicts with every comparison behind them (labels: mcd, mct, tract, pd, mcd_fixed<N>, mcd_ddim).
    Each claim is logged as it is decided (the resamples take minutes at 50k rows)."""
    fixed = sorted({lb for lb, _ in points if lb.startswith("mcd_fixed")}, key=lambda lb: int(lb[9:] or 0))
    teacher = max((k for k in points if k[0] == TEACHER), key=lambda k: k[1], default=(TEACHER, 512))
    out = []
    for number, claim, source, spec in _claims(fixed or ["mcd_fixed<N>"], teacher):
        v = Verdict(number, claim, source)
        for a, b, want in spec:
            pair = _paired(points, a, b)
            if pair is None:
                v.missing += [f"{lb} S={s}" for lb, s in (a, b) if not points.get((lb, s))]
                continue
            diff = paired_difference(*pair, ref, fd, n_boot, seed)
            margin = 0.1 * fd(pair[1][0], ref) if want == "within" else 0.0
            v.comparisons.append(Comparison(a, b, want, diff, margin))
        out.append(v)
        log.info(f"  claim ({number}) {v.verdict}")
    return out


def compare_methods(points: Points, ref: np.ndarray, a: str, b: str, n_boot: int = 200, seed: int = 0) -> list:
    """Method a against method b (or a teacher curve) at every S both measured: paired FD differences, "compare"."""
    steps = sorted({s for lb, s in points if lb == a} & {s for lb, s in points if lb == b})
    out = []
    for s in steps:
        if pair := _paired(points, (a, s), (b, s)):
            out.append(Comparison((a, s), (b, s), "compare", paired_difference(*pair, ref, fd, n_boot, seed)))
    return out


def point_table(points: Points, ref: np.ndarray, n_boot: int = 200, seed: int = 0) -> list[dict]:
    """Every point's FD (mean over its training seeds) with its 95% interval (seeds and rows resampled); the
    teacher's points and the floor's ("floor", 0: a second data sample) last, with intervals alike."""
    rows = []
    last = lambda kv: (kv[0][0].startswith(("teacher", "floor")), kv[0])
    for (label, steps), by_seed in sorted(points.items(), key=last):
        est: Estimate = interval([by_seed[k] for k in sorted(by_seed)], ref, fd, n_boot, seed)
        rows.append(
            {"method": label, "student_steps": steps, "seeds": len(by_seed), "rows": len(next(iter(by_seed.values())))}
            | {"fd": est.value, "lo": est.lo, "hi": est.hi}
        )
        log.info(f"  {label} S={steps}: FD {est.describe()} ({len(rows)}/{len(points)})")
    return rows


def diversity_table(points: Points, ref: np.ndarray, gmm=None, rows: int = 5000, n_boot: int = 200):
    """Every point's precision, recall (and, with the data's mixture, modes_missed and mode_tv) on its first `rows`
    kept rows against the reference's, each with its 95% interval (metrics/diversity.py)."""
    from multistep.metrics.diversity import diversity_intervals

    out = []
    for (label, steps), by_seed in sorted(points.items()):
        est = diversity_intervals([by_seed[k] for k in sorted(by_seed)], ref[:rows], gmm, n_boot=n_boot)
        out.append({"method": label, "student_steps": steps} | {m: e for m, e in est.items()})
        log.info(f"  {label} S={steps}: " + ", ".join(f"{m} {e.describe()}" for m, e in est.items()))
    return out


def compare_diversity(points: Points, ref: np.ndarray, a: str, b: str, gmm=None, rows: int = 5000, n_boot: int = 200):
    """Method a against method b at every S both measured: {metric: Comparison} per S (paired as FD's)."""
    from multistep.metrics.diversity import paired_diversity

    steps = sorted({s for lb, s in points if lb == a} & {s for lb, s in points if lb == b})
    out = []
    for s in steps:
        if pair := _paired(points, (a, s), (b, s)):
            diffs = paired_diversity(*pair, ref[:rows], gmm, n_boot=n_boot)
            out.append({m: Comparison((a, s), (b, s), "compare", d) for m, d in diffs.items()})
    return out


@dataclass
class BudgetChange:
    point: tuple[str, int]  # (label, student steps)
    iterations: tuple[int, int]  # (shorter, longer) training budget
    diff: Difference  # FD at the longer budget minus FD at the shorter, paired by rows and seeds

    def describe(self) -> str:
        (label, s), (short, long) = self.point, self.iterations
        return self.diff.describe(f"{label} S={s} at {long}", f"at {short} iterations")


def budget_changes(
    budgets: list[tuple[Points, dict]], ref: np.ndarray, n_boot: int = 200, seed: int = 0
) -> list[BudgetChange]:
    """Did a longer budget help? For every student point two sweeps both measured (budgets: (points, {point:
    iterations}) per sweep, evaluated on the same rows and ref), the paired FD difference between each budget and
    the next longer one; the sweep run's own points (teacher, floor: trained by no trial) are skipped."""
    out = []
    by_point: dict = {}
    for points, iterations in budgets:
        for key, rows in points.items():
            if key in iterations:
                by_point.setdefault(key, []).append((iterations[key], rows))
    for key, runs in sorted(by_point.items()):
        runs.sort(key=lambda r: r[0])
        for (short, ps), (long, pl) in zip(runs, runs[1:]):
            seeds = sorted(set(ps) & set(pl))
            if not seeds or short == long:
                continue
            diff = paired_difference([pl[k] for k in seeds], [ps[k] for k in seeds], ref, fd, n_boot, seed)
            out.append(BudgetChange(key, (short, long), diff))
            log.info(f"  {out[-1].describe()}")
    return out


def format_verdicts(verdicts: list[Verdict]) -> str:
    lines = []
    for v in verdicts:
        lines.append(f"({v.number}) {v.claim} [{v.source}]: {v.verdict.upper()}")
        lines += [f"    {c.describe()}" for c in v.comparisons]
        if v.missing:
            lines.append(f"    not measured: {', '.join(dict.fromkeys(v.missing))}")
    return "\n".join(lines)
