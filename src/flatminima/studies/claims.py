"""Claims as code: what a study tests, and the rule that decides it, written down before the run.

A study declares a :class:`Criterion`: the published value with its source, the pass criterion in words,
and ``decide``, a pure function of the study's measured numbers (``Summary.measured``) that returns a
:class:`Verdict`. ``run_study`` prints the criterion before any point runs and applies ``decide`` after
the summary, so the verdict is computed, never written by hand, and each rule is tested on synthetic
numbers (one set that must pass, one that must fail, one that must stay inconclusive).

Outcomes:

* ``PASS``: every part of the claim holds, by the stated margin.
* ``FAIL``: some part is contradicted: its interval excludes the claim.
* ``INCONCLUSIVE``: no part is contradicted but some part is not established: its preconditions failed
  (too few measured points survived the checks) or its interval contains both the claim and its
  negation. At default scale this is a defect of the protocol, not a result.

A claim is a conjunction: :func:`combine` gives FAIL if any part fails, else INCONCLUSIVE if any part is
inconclusive, else PASS.

Preconditions: :func:`screen` splits a study's points into those that satisfy every named check (a
certified minimum, zero training error, a saturated search, ...) and those that do not; the excluded are
counted per check and shown, and never enter a comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
OUTCOMES = (PASS, FAIL, INCONCLUSIVE)


@dataclass(frozen=True)
class Part:
    """One part of a claim, decided: ``outcome`` and the one-line reason with the numbers behind it."""

    name: str
    outcome: str
    reason: str

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ConfigError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")


@dataclass(frozen=True)
class Verdict:
    """A study's verdict: the overall outcome and its parts."""

    outcome: str
    parts: tuple[Part, ...] = ()

    def __str__(self) -> str:
        return f"{self.outcome}: " + "; ".join(f"{p.name} {p.outcome} ({p.reason})" for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome,
                "parts": [{"name": p.name, "outcome": p.outcome, "reason": p.reason} for p in self.parts]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        return cls(d["outcome"], tuple(Part(p["name"], p["outcome"], p["reason"]) for p in d.get("parts", ())))

    def markdown(self) -> str:
        """The verdict as Markdown: the outcome in bold, then one bullet per part."""
        return "\n".join([f"**{self.outcome}**", ""] + [f"- {p.name}: **{p.outcome}**, {p.reason}" for p in self.parts])


def combine(parts: Sequence[Part]) -> Verdict:
    """The verdict of a conjunction: FAIL if any part fails, else INCONCLUSIVE if any is, else PASS."""
    if not parts:
        raise ConfigError("a verdict needs at least one part")
    outcomes = {p.outcome for p in parts}
    outcome = FAIL if FAIL in outcomes else INCONCLUSIVE if INCONCLUSIVE in outcomes else PASS
    return Verdict(outcome, tuple(parts))


@dataclass(frozen=True)
class Criterion:
    """A study's claim as code.

    published: the paper's value(s) with the source (e.g. ``"P/N* ≈ 3 (Geiger et al., PRE 2019, Fig. 2)"``).
    rule: the pass criterion in words, as fixed before the run.
    decide: measured numbers (the study's ``Summary.measured``) -> :class:`Verdict`.
    """

    published: str
    rule: str
    decide: Callable[[Mapping[str, Any]], Verdict]


# ---- decisions on common statistics ------------------------------------------------------------------------


def below(name: str, mean: float, stderr: float, bound: float = 0.0, claimed: float | None = None,
          z: float = 2.0, what: str = "") -> Part:
    """Part 'mean < bound by more than z standard errors' (e.g. a paired difference below zero).

    PASS when mean + z stderr < bound. FAIL when the interval [mean - z se, mean + z se] lies at or above
    ``bound``, or, given the ``claimed`` value (a claimed improvement, e.g. -0.005), when the interval lies
    above it (the claimed effect is excluded). Else INCONCLUSIVE. A non-finite mean or stderr, or a missing
    one, is INCONCLUSIVE.
    """
    label = what or name
    if not (_finite(mean) and _finite(stderr)) or stderr < 0:
        return Part(name, INCONCLUSIVE, f"{label}: not measured")
    lo, hi = mean - z * stderr, mean + z * stderr
    text = f"{label} = {mean:.4g} ± {stderr:.2g} (s.e.), {z:g}-s.e. interval [{lo:.4g}, {hi:.4g}] vs {bound:g}"
    if hi < bound:
        return Part(name, PASS, text)
    if lo >= bound or (claimed is not None and lo > claimed):
        return Part(name, FAIL, text + (f"; excludes the claimed {claimed:g}" if claimed is not None and lo > claimed
                                        and lo < bound else ""))
    return Part(name, INCONCLUSIVE, text + (f"; contains both {bound:g} and the claimed {claimed:g}"
                                            if claimed is not None else ""))


def in_range(name: str, value: float, lo: float, hi: float, low: float | None = None, high: float | None = None,
             what: str = "") -> Part:
    """Part 'value in [lo, hi]'. With an uncertainty interval [low, high] around the value: PASS when the
    interval lies inside [lo, hi], FAIL when it lies outside, INCONCLUSIVE when it straddles an end.
    Without one: PASS inside, FAIL outside. Not measured (None / non-finite): INCONCLUSIVE."""
    label = what or name
    if not _finite(value):
        return Part(name, INCONCLUSIVE, f"{label}: not measured")
    low = value if low is None or not _finite(low) else low
    high = value if high is None or not _finite(high) else high
    span = f" [{low:.3g}, {high:.3g}]" if (low, high) != (value, value) else ""
    text = f"{label} = {value:.3g}{span}, required in [{lo:g}, {hi:g}]"
    if lo <= low and high <= hi:
        return Part(name, PASS, text)
    if high < lo or low > hi:
        return Part(name, FAIL, text)
    return Part(name, INCONCLUSIVE, text)


def at_least(name: str, value: float | None, bound: float, what: str = "") -> Part:
    """Part 'value >= bound' for an exact (counted, not estimated) number: PASS or FAIL; None: INCONCLUSIVE."""
    label = what or name
    if value is None or not _finite(value):
        return Part(name, INCONCLUSIVE, f"{label}: not measured")
    return Part(name, PASS if value >= bound else FAIL, f"{label} = {value:.4g}, required ≥ {bound:g}")


def at_most(name: str, value: float | None, bound: float, what: str = "") -> Part:
    """Part 'value <= bound' for an exact number: PASS or FAIL; None: INCONCLUSIVE."""
    label = what or name
    if value is None or not _finite(value):
        return Part(name, INCONCLUSIVE, f"{label}: not measured")
    return Part(name, PASS if value <= bound else FAIL, f"{label} = {value:.4g}, required ≤ {bound:g}")


def correlation(name: str, tau: float | None, p: float | None, n: int, threshold: float, alpha: float,
                upper: float | None = None, lower: float | None = None, what: str = "") -> Part:
    """Part 'Kendall τ beyond ``threshold`` (same sign) with p < alpha'.

    ``threshold`` > 0 claims τ ≥ threshold, < 0 claims τ ≤ threshold. ``lower, upper``: a 95 % interval
    of τ (e.g. bootstrap, :func:`kendall`). PASS: τ beyond the threshold and p < alpha. FAIL: the interval
    lies entirely short of the threshold (the claimed strength is excluded), or τ has the opposite sign
    with p < alpha. Else INCONCLUSIVE. Fewer than 5 points: INCONCLUSIVE.
    """
    label = what or name
    if tau is None or p is None or not (_finite(tau) and _finite(p)) or n < 5:
        return Part(name, INCONCLUSIVE, f"{label}: {n} points, not enough to decide")
    sign = 1.0 if threshold >= 0 else -1.0
    ci = f", 95 % interval [{lower:+.2f}, {upper:+.2f}]" if lower is not None and upper is not None else ""
    text = f"{label}: τ = {tau:+.3f}, p = {p:.2g}, n = {n}{ci}; required {'≥' if sign > 0 else '≤'} {threshold:+g}, p < {alpha:g}"
    if sign * tau >= sign * threshold and p < alpha:
        return Part(name, PASS, text)
    far = upper if sign > 0 else lower
    if far is not None and _finite(far) and sign * far < sign * threshold:
        return Part(name, FAIL, text)
    if sign * tau < 0 and p < alpha:
        return Part(name, FAIL, text + "; significant with the opposite sign")
    return Part(name, INCONCLUSIVE, text)


def not_enough(name: str, have: int, need: int, what: str = "points that met their preconditions") -> Part | None:
    """An INCONCLUSIVE part when fewer than ``need`` measured points survived their checks, else None."""
    if have < need:
        return Part(name, INCONCLUSIVE, f"only {have} {what}, {need} needed")
    return None


# ---- statistics used by the rules ------------------------------------------------------------------------


def kendall(x: Sequence[float], y: Sequence[float], groups: Sequence[Any] | None = None, n_boot: int = 2000,
            seed: int = 0, n_perm: int = 10_000) -> dict[str, float]:
    """Kendall τ-b of two samples with its two-sided p-value and a 95 % bootstrap interval.

    x, y: (n,) samples. Without ``groups``: scipy's τ-b and p-value, and a bootstrap interval over the n
    points. With ``groups`` ((n,) labels, e.g. the instance a solution was found on): the *stratified* τ-b,
    which compares only pairs of points of the same group (pooled concordant minus discordant pairs over the
    pooled tie-corrected pair counts, so one group reduces to the plain τ-b); its p-value is that of a
    permutation test that shuffles y within each group (``n_perm`` permutations, two-sided, never below
    1 / (n_perm + 1)) and its interval a bootstrap that resamples within each group.

    Returns ``{"tau", "p", "n", "lower", "upper"}`` (plus ``"groups"`` when stratified); fewer than 3
    points (or no group with 2 distinct points) give NaNs.
    """
    import numpy as np
    from scipy.stats import kendalltau

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ConfigError(f"kendall needs two 1-d samples of one length, got {x.shape} and {y.shape}")
    n = int(x.size)
    nan = {"tau": math.nan, "p": math.nan, "n": n, "lower": math.nan, "upper": math.nan}
    if groups is None:
        if n < 3:
            return nan
        res = kendalltau(x, y)
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            i = rng.integers(0, n, n)
            if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
                boots.append(kendalltau(x[i], y[i]).statistic)
        lower, upper = (np.percentile(boots, [2.5, 97.5]) if boots else (math.nan, math.nan))
        return {"tau": float(res.statistic), "p": float(res.pvalue), "n": n, "lower": float(lower),
                "upper": float(upper)}
    labels = list(groups)
    if len(labels) != n:
        raise ConfigError(f"kendall: {len(labels)} group labels for {n} points")
    members = [np.flatnonzero([g == lab for g in labels]) for lab in dict.fromkeys(labels)]
    members = [m for m in members if m.size >= 2]
    out = {**nan, "groups": len(members)}
    if n < 3 or not members:
        return out

    def signs(v: np.ndarray) -> np.ndarray:  # (..., m) -> (..., m, m) strict upper-triangle signs
        s = np.sign(v[..., None, :] - v[..., :, None])
        return np.triu(s, k=1)

    def stat(idx_sets: list[np.ndarray], yperm: list[np.ndarray] | None = None) -> np.ndarray | float:
        num, tx, ty = 0.0, 0.0, 0.0
        for k, idx in enumerate(idx_sets):
            sx = signs(x[idx])
            sy = signs(y[idx] if yperm is None else yperm[k])
            num = num + (sx * sy).sum(axis=(-2, -1))
            tx = tx + (sx != 0).sum(axis=(-2, -1))
            ty = ty + (sy != 0).sum(axis=(-2, -1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / np.sqrt(tx * ty)

    tau = float(stat(members))
    if not math.isfinite(tau):
        return out
    rng = np.random.default_rng(seed)
    # permutation null: y shuffled within each group; the tie counts do not change, only the numerator
    perm_taus = np.zeros(n_perm)
    for start in range(0, n_perm, 1000):
        b = min(1000, n_perm - start)
        yperm = [y[m][np.argsort(rng.random((b, m.size)), axis=1)] for m in members]
        perm_taus[start:start + b] = stat(members, yperm)
    p = (1 + int(np.sum(np.abs(perm_taus) >= abs(tau) - 1e-12))) / (n_perm + 1)
    boots = []
    for _ in range(n_boot):
        resampled = [m[rng.integers(0, m.size, m.size)] for m in members]
        t = stat(resampled)
        if math.isfinite(t):
            boots.append(t)
    lower, upper = (np.percentile(boots, [2.5, 97.5]) if boots else (math.nan, math.nan))
    return {**out, "tau": tau, "p": float(p), "lower": float(lower), "upper": float(upper)}


def mean_stderr(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, standard error of the mean, n) of the finite values; NaNs when fewer than 2."""
    vals = [float(v) for v in values if _finite(v)]
    n = len(vals)
    if n < 2:
        return (vals[0] if vals else math.nan), math.nan, n
    m = sum(vals) / n
    var = sum((v - m) ** 2 for v in vals) / (n - 1)
    return m, math.sqrt(var / n), n


# ---- preconditions --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A precondition of a measured point: ``holds(point, result)`` must be true for the point to count."""

    name: str
    holds: Callable[[Mapping[str, Any], Mapping[str, Any]], bool]


@dataclass
class Screened:
    """The points that met every check, and the excluded ones counted by the first check they failed."""

    kept: list[tuple[dict, dict]] = field(default_factory=list)
    excluded: list[tuple[dict, dict, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, _, why in self.excluded:
            out[why] = out.get(why, 0) + 1
        return out

    def table(self, describe: Callable[[Mapping[str, Any]], str] = lambda p: ", ".join(
            f"{k}={v}" for k, v in p.items() if not isinstance(v, (list, dict)))) -> str:
        """Markdown table of the excluded points (one row each) and the count kept; '' when none excluded."""
        if not self.excluded:
            return ""
        rows = ["| point | failed check |", "|---|---|"]
        rows += [f"| {describe(p)} | {why} |" for p, _, why in self.excluded]
        rows.append(f"| **kept: {len(self.kept)}, excluded: {len(self.excluded)}** | |")
        return "\n".join(rows)


def screen(results: Iterable[tuple[dict, dict]], checks: Sequence[Check]) -> Screened:
    """Split ``(point, result)`` pairs by the checks (in order; a point is excluded by the first it fails).

    A check that raises (a missing key, a malformed result) counts as failed, so a point whose result
    cannot be checked never enters a comparison.
    """
    out = Screened()
    for point, result in results:
        failed = None
        for check in checks:
            try:
                ok = bool(check.holds(point, result))
            except (KeyError, TypeError, ValueError, IndexError):
                ok = False
            if not ok:
                failed = check.name
                break
        if failed is None:
            out.kept.append((point, result))
        else:
            out.excluded.append((point, result, failed))
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
