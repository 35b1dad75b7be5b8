"""Study ``wide-flat-minima``: wide flat minima of the binary perceptron, the algorithms that find them, and
whether a slow reduction of the weights' norm leads SGD to them in a non-convex network.

Reproduces Baldassi, Pittorino, Zecchina, "Shaping the learning landscape in neural networks around wide flat
minima", PNAS 117:161 (2020), with the algorithms of Baldassi et al. PNAS 113:E7655 (2016).

Three kinds of points:

* ``curve``: a teacher-student binary perceptron (N weights, load alpha); a reference solution is found by a
  solver (fbp, rsgd, ce-mc, le-mc, sa) or is the teacher itself (the planted solution, distributed as a
  *typical* equilibrium solution); its Franz-Parisi local entropy S(d) is computed by BP (gamma scan and
  Legendre transform) and its local energy (training error after flipping a random fraction d of the
  weights) by Monte Carlo. Where the scan jumps (a first-order transition: the BP fixed point stays frozen
  on the reference, then leaps to a distant branch), S(d) between the two branches is the concave hull of
  the scanned points: an *upper bound* of the local entropy, never a measured value. Every reported S(d)
  is labelled measured or bound (:func:`hull_state`).
* ``success``: random-label instances at several loads; success (zero training errors), time and steps of
  every solver, each with ``solver_budget`` times the library's default budget (a slower annealing, a
  slower focusing, a slower coupling growth: :func:`solver_options`).
* ``sgd``: a one-hidden-layer network (committee machine: N inputs, K hidden (leaky-)ReLU units, fixed
  second layer +-1/sqrt(K), :func:`train_committee`) on random +-1 patterns with random labels, trained
  by minibatch SGD on the cross-entropy with the learning rate decayed to zero (cosine), with (a) the free
  norm, (b) every first-layer row projected after each step to a norm rho(t) slowly *reduced* (geometric,
  ``sgd_rho_high`` -> ``sgd_rho_low``), and, as a control, (c) the norm slowly *increased*
  (``sgd_rho_low`` -> ``sgd_rho_high``). Units are positively homogeneous, so the row norm is the inverse
  temperature of the cross-entropy, as the weight norm of the continuous perceptron is. Local energy
  (Pittorino et al., ICLR 2021): training error after multiplicative Gaussian noise w -> w (1 + sigma eps)
  on every trained weight, averaged over ``sgd_draws`` draws shared by the protocols of a seed
  (:func:`committee_local_energy`). The single continuous perceptron is convex and free-norm SGD on it
  tends to the max-margin solution (Soudry et al. 2018), so it cannot show the effect; the hidden layer
  makes the landscape non-convex.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from .claims import (  # noqa: E402
    FAIL,
    INCONCLUSIVE,
    PASS,
    Check,
    Criterion,
    Part,
    Screened,
    Verdict,
    below,
    combine,
    mean_stderr,
    not_enough,
    screen,
)
from .registry import Study, Summary, register  # noqa: E402

CURVE_REFS = ("teacher", "fbp", "rsgd", "ce-mc", "le-mc", "sa")
#: solvers claimed to land in wide flat minima (entropic algorithms and the cross-entropy minimiser)
WIDE_SOLVERS = {"fbp": "focusing BP", "rsgd": "replicated SGD", "le-mc": "entropy-driven MC (local energy)",
                "ce-mc": "cross-entropy MC"}
FREE, REDUCED, INCREASED = "free norm", "norm slowly reduced", "norm slowly increased"
SGD_PROTOCOLS = (FREE, REDUCED, INCREASED)
REPORT_D = (0.005, 0.01, 0.02, 0.05, 0.1)
#: the distance at which wide (close to H2(d)) and narrow minima are told apart
DECISION_D = 0.01
#: a solution lands in a wide flat minimum when H2(d) - S(d) is below this fraction of the typical solution's
WIDE_FRACTION = 0.5
#: a BP fixed point is frozen on the reference when its distance is below this fraction of a free weight's
FROZEN_FRACTION = 0.1
#: a segment of the scan jumps when the distance relative to a free weight's grows by more than this factor
JUMP_FACTOR = 2.0
#: fewest paired seeds (both protocols at zero training error) for the SGD comparison
MIN_PAIRS = 3
MEASURED, BOUND, NONE = "measured", "upper bound", "none"


def _floats(text: str) -> list[float]:
    return [float(t) for t in str(text).split(",") if t.strip()]


def _words(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


# ---------------------------------------------------------------------------------------------- solvers


def solver_options(solver: str, budget: float) -> dict[str, Any]:
    """Options of :func:`flatminima.perceptron.solve` giving ``solver`` ``budget`` times its default budget.

    The budget is stretched by slowing the solver's schedule over proportionally more steps, not by
    running the default schedule longer (which would add nothing once the schedule is over): fbp's
    reinforcement step r = 0.05 / budget (int(0.999 / r) focusing steps of up to 5 sweeps); rsgd 500 budget
    epochs with the coupling growth factor 1.02^(1 / budget) per epoch (the same coupling range); sa 300
    budget sweeps, ce-mc and le-mc 150 budget sweeps, over the same inverse-temperature (and flip-fraction)
    range. Returns the keyword arguments and, under ``"max_steps"``, the budget in the solver's steps
    (sweeps for fbp and the annealers, epochs for rsgd).
    """
    if not budget > 0:
        raise ConfigError(f"solver_budget must be positive, got {budget}")
    if solver == "fbp":
        r = 0.05 / budget
        return {"r": r, "max_steps": int(0.999 / r) * 5}
    if solver == "rsgd":
        epochs = max(1, int(round(500 * budget)))
        return {"epochs": epochs, "coupling_factor": 1.02 ** (1.0 / budget), "max_steps": epochs}
    if solver in ("sa", "ce-mc", "le-mc"):
        sweeps = max(1, int(round((300 if solver == "sa" else 150) * budget)))
        return {"sweeps": sweeps, "max_steps": sweeps}
    raise ConfigError(f"unknown solver {solver!r}; choose from fbp, rsgd, sa, ce-mc, le-mc")


def _solve(X, y, solver: str, seed: int, budget: float):
    from ..perceptron import solve

    opts = solver_options(solver, budget)
    max_steps = opts.pop("max_steps")
    return solve(X, y, solver, seed=seed, **opts), max_steps


# ---------------------------------------------------------------------------------------------- the network


def pm1_instance(n: int, p: int, seed: int):
    """``p`` random +-1 patterns of ``n`` inputs with random +-1 labels: ``(X (p, n), y (p,))`` float64 tensors."""
    import torch

    if n < 1 or p < 1:
        raise ConfigError(f"need n >= 1 inputs and p >= 1 patterns, got n={n}, p={p}")
    g = torch.Generator().manual_seed(int(seed))
    X = (torch.randint(0, 2, (p, n), generator=g) * 2 - 1).double()
    y = (torch.randint(0, 2, (p,), generator=g) * 2 - 1).double()
    return X, y


def _second_layer(k: int):
    import torch

    if k < 2 or k % 2:
        raise ConfigError(f"the network needs an even number K >= 2 of hidden units (half +1, half -1), got {k}")
    return torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(k)], dtype=torch.float64) / math.sqrt(k)


def _act(h, leak: float):
    import torch

    return torch.where(h > 0, h, leak * h)


def committee_margins(X, y, W, leak: float):
    """Margins y_mu f(x_mu) of the committee f(x) = sum_k v_k phi(w_k . x / sqrt(N)), v_k = +-1/sqrt(K).

    X (P, N), y (P,), W (K, N) or a batch (B, K, N); phi(h) = h for h > 0, leak h otherwise (leak = 0:
    ReLU). Returns (P,) or (B, P); a pattern is misclassified when its margin is <= 0."""
    import torch

    v = _second_layer(W.shape[-2]).to(W.dtype)
    h = (X @ W.transpose(-1, -2)) / math.sqrt(X.shape[1]) if W.ndim == 2 else torch.einsum(
        "pn,bkn->bpk", X, W) / math.sqrt(X.shape[1])
    return y * (_act(h, leak) @ v)


def train_committee(X, y, k: int, epochs: int, lr: float, batch: int, norm: tuple[float, float] | None,
                    seed: int, leak: float = 0.1, rho_init: float = 1.0) -> dict[str, Any]:
    """Minibatch SGD on the cross-entropy of a one-hidden-layer committee (see :func:`committee_margins`).

    X (P, N) +-1 patterns, y (P,) +-1 labels, k even hidden units. Loss per pattern log(1 + exp(-y f(x))).
    Weights W (K, N), initialised Gaussian with every row of norm ``rho_init`` sqrt(N) (so a hidden field
    w . x / sqrt(N) has standard deviation rho_init on random patterns), the initial direction set by
    ``seed`` alone. The learning rate decays from ``lr`` to zero by a cosine over the epochs * ceil(P /
    batch) steps; the step is W -= lr_t N dL/dW, which moves a pattern's own hidden fields by at most
    lr_t N / (batch sqrt(K)) (the loss of a minibatch is its mean).
    ``norm=None``: free norm. ``norm=(rho0, rho1)``: every row starts at and, after every step, is
    projected back to the norm rho(t) sqrt(N), rho geometric from rho0 to rho1 over the steps. The row
    norm is the inverse temperature of the loss (the units are positively homogeneous). Minibatch order
    depends on ``seed`` only, so two protocols on one seed see the same batches.

    Returns ``{"W": (K, N) tensor, "errors", "loss", "rho" (mean row norm / sqrt(N)), "kappa_min" (smallest
    margin of W / rho, the normalised margin), "seconds", "history" (per tenth of training: step, lr,
    rho, errors, loss)}``.
    """
    import torch

    if epochs < 1 or batch < 1 or not lr > 0 or not rho_init > 0 or not 0 <= leak < 1:
        raise ConfigError("need epochs >= 1, batch >= 1, lr > 0, rho_init > 0 and 0 <= leak < 1")
    if norm is not None and (len(norm) != 2 or min(norm) <= 0):
        raise ConfigError("norm must be None or a pair (rho0, rho1) of positive numbers")
    P, N = X.shape
    v = _second_layer(k)
    g = torch.Generator().manual_seed(4000 + int(seed))
    W = torch.randn(k, N, generator=g, dtype=torch.float64)
    sq = math.sqrt(N)
    steps_per_epoch = -(-P // batch)
    T = epochs * steps_per_epoch
    rhos = np.geomspace(norm[0], norm[1], T) if norm is not None else None
    W *= (rhos[0] if rhos is not None else rho_init) * sq / W.norm(dim=1, keepdim=True)
    t0 = time.perf_counter()
    history, t = [], 0
    checkpoints = {int(round(T * j / 10)) for j in range(1, 11)}

    def evaluate(Wc):
        m = committee_margins(X, y, Wc, leak)
        return int((m <= 0).sum()), float(torch.nn.functional.softplus(-m).mean()), m

    for _ in range(epochs):
        perm = torch.randperm(P, generator=g)
        for s in range(0, P, batch):
            idx = perm[s : s + batch]
            xb, yb = X[idx], y[idx]
            h = xb @ W.T / sq
            m = yb * (_act(h, leak) @ v)
            gf = -yb * torch.sigmoid(-m) / len(idx)  # dL/df
            gh = gf[:, None] * v[None, :] * torch.where(h > 0, 1.0, leak)  # dL/dh (B, K)
            eta = lr * 0.5 * (1.0 + math.cos(math.pi * t / T))
            W -= eta * N * (gh.T @ xb) / sq
            if rhos is not None:
                W *= rhos[t] * sq / W.norm(dim=1, keepdim=True)
            t += 1
            if t in checkpoints:
                err, loss, _ = evaluate(W)
                history.append({"step": t, "lr": eta, "rho": float(W.norm(dim=1).mean() / sq), "errors": err,
                                "loss": loss})
    err, loss, m = evaluate(W)
    rho = float(W.norm(dim=1).mean() / sq)
    return {"W": W, "errors": err, "loss": loss, "rho": rho, "kappa_min": float(m.min()) / rho,
            "seconds": time.perf_counter() - t0, "history": history}


def committee_local_energy(X, y, W, sigmas, draws: int, seed: int, leak: float, chunk: int = 50) -> np.ndarray:
    """Local energy of a committee: mean training error (fraction of patterns) after w -> w (1 + sigma eps),
    eps ~ N(0, 1) independently per weight, over ``draws`` draws; the same draws (set by ``seed``) for every
    sigma and every W of one shape. X (P, N), y (P,), W (K, N). Returns an array like ``sigmas``."""
    import torch

    if draws < 1:
        raise ConfigError("draws must be >= 1")
    sig = np.atleast_1d(np.asarray(sigmas, dtype=float))
    if np.any(sig < 0) or not np.all(np.isfinite(sig)):
        raise ConfigError("sigmas must be finite and >= 0")
    g = torch.Generator().manual_seed(5000 + int(seed))
    eps = torch.randn(draws, *W.shape, generator=g, dtype=W.dtype)
    out = np.zeros(len(sig))
    for i, s in enumerate(sig):
        wrong = 0.0
        for c in range(0, draws, chunk):
            m = committee_margins(X, y, W * (1.0 + float(s) * eps[c : c + chunk]), leak)
            wrong += float((m <= 0).double().sum())
        out[i] = wrong / (draws * X.shape[0])
    return out


# ---------------------------------------------------------------------------------------------- hull


def _scan_points(scan_d, scan_S, scan_gamma, scan_converged) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Converged scan points (d, S, gamma) sorted by d, equal d keeping the largest S (as BP's interpolation)."""
    d, S, g, c = (np.asarray(a, dtype=float) for a in (scan_d, scan_S, scan_gamma, scan_converged))
    ok = c.astype(bool) & np.isfinite(S) & np.isfinite(d) & np.isfinite(g)
    d, S, g = d[ok], S[ok], g[ok]
    order = np.lexsort((-S, d))
    d, S, g = d[order], S[order], g[order]
    keep = np.concatenate([[True], np.diff(d) > 1e-10]) if len(d) else np.zeros(0, bool)
    return d[keep], S[keep], g[keep]


def legendre_upper_bound(scan_d, scan_S, scan_gamma, scan_converged, targets) -> np.ndarray:
    """The Legendre upper bound of the local entropy: S(d) <= min_gamma [S_gamma + 2 gamma (d - d_gamma)].

    Every converged scan point gives one: phi(gamma) = max_d' [S(d') + gamma (1 - 2 d')], so S(d) <=
    phi(gamma) - gamma (1 - 2 d) = S_gamma + 2 gamma (d - d_gamma) for every d, with equality at the point
    itself. Rigorous given the free entropies phi (it bounds the true, possibly non-concave, S(d), which
    the chord of the scan points does not). Returns an array like ``targets`` (NaN without scan points)."""
    d, S, g, c = (np.asarray(a, dtype=float) for a in (scan_d, scan_S, scan_gamma, scan_converged))
    ok = c.astype(bool) & np.isfinite(S) & np.isfinite(d) & np.isfinite(g)
    d, S, g = d[ok], S[ok], g[ok]  # every converged point, equal distances included: each gives its own bound
    t = np.atleast_1d(np.asarray(targets, dtype=float))
    if len(d) == 0:
        return np.full(len(t), np.nan)
    return np.min(S[None, :] + 2.0 * g[None, :] * (t[:, None] - d[None, :]), axis=1)


def hull_state(scan_d, scan_S, scan_gamma, scan_converged, targets, frozen: float = FROZEN_FRACTION,
               jump: float = JUMP_FACTOR) -> list[str]:
    """Whether the local entropy at each target distance is measured, or known only as an upper bound.

    Inputs: the BP gamma scan of a :class:`~flatminima.perceptron.LocalEntropyCurve` (arrays of one length)
    and the target distances. :func:`flatminima.perceptron.local_entropy` interpolates between converged
    scan points by the cubic with the exact slopes dS/dd = 2 gamma where that cubic is concave, else by the
    chord (the concave hull, meant for a jump of the scan across a first-order transition). A target is
    ``"measured"`` when its segment is interpolated by the cubic and shows no jump: neither endpoint frozen
    on the reference (its distance below ``frozen`` times a free weight's at the same gamma, (1 - tanh
    gamma) / 2: the BP fixed point saw no solutions around the reference) and the distance relative to a
    free weight's grows by less than the factor ``jump`` along the segment. Otherwise it is ``"upper
    bound"``: the true S(d) may lie anywhere below (down to no solutions at all for an isolated
    reference), and :func:`curve_value` reports the Legendre bound. Outside the converged scan: ``"none"``.
    """
    d, S, g = _scan_points(scan_d, scan_S, scan_gamma, scan_converged)
    targets = np.atleast_1d(np.asarray(targets, dtype=float))
    if len(d) < 2:
        return [NONE] * len(targets)
    ratio = d / ((1.0 - np.tanh(g)) / 2.0)
    is_frozen = ratio < frozen
    m = 2.0 * g
    out = []
    for t in targets:
        if not d[0] <= t <= d[-1]:
            out.append(NONE)
            continue
        j = int(np.clip(np.searchsorted(d, t, side="right") - 1, 0, len(d) - 2))
        ch = (S[j + 1] - S[j]) / (d[j + 1] - d[j])
        tol = 1e-9 * (1 + abs(ch))
        concave = (2 * m[j] + m[j + 1] >= 3 * ch - tol) and (m[j] + 2 * m[j + 1] <= 3 * ch + tol)
        jumped = is_frozen[j] or is_frozen[j + 1] or ratio[j + 1] > jump * ratio[j]
        out.append(MEASURED if concave and not jumped else BOUND)
    return out


# ---------------------------------------------------------------------------------------------- points


def points(cfg: dict) -> list[dict]:
    """Curve points (largest N first: the longest points start first), success points, SGD points."""
    if cfg["sgd_sigma"] not in _floats(cfg["sgd_sigmas"]):
        raise ConfigError(f"sgd_sigma = {cfg['sgd_sigma']} must be one of sgd_sigmas = {cfg['sgd_sigmas']}")
    if cfg["sgd_k"] % 2:
        raise ConfigError(f"sgd_k must be even (half the hidden units +1, half -1), got {cfg['sgd_k']}")
    if not cfg["sgd_rho_low"] < cfg["sgd_rho_high"]:
        raise ConfigError("sgd_rho_low must be below sgd_rho_high")
    if not 0 <= cfg["sgd_leak"] < 1:
        raise ConfigError(f"sgd_leak must be in [0, 1), got {cfg['sgd_leak']}")
    pts = []
    sizes = [(cfg["n"], cfg["curve_seeds"])] + ([(cfg["small_n"], cfg["small_seeds"])] if cfg.get("small_n") else [])
    for n, seeds in sizes:
        for seed in range(seeds):
            for ref in _words(cfg["curve_refs"]):
                pts.append({"kind": "curve", "ref": ref, "n": n, "alpha": cfg["curve_alpha"], "seed": seed,
                            "distances": cfg["distances"], "n_gamma": cfg["n_gamma"], "le_samples": cfg["le_samples"],
                            "bp_max_iters": cfg["bp_max_iters"], "bp_tol": cfg["bp_tol"],
                            "budget": cfg["solver_budget"]})
    for alpha in sorted(_floats(cfg["success_alphas"]), reverse=True):
        for solver in _words(cfg["success_solvers"]):
            for seed in range(cfg["success_seeds"]):
                pts.append({"kind": "success", "solver": solver, "n": cfg["success_n"], "alpha": alpha, "seed": seed,
                            "budget": cfg["solver_budget"]})
    for seed in range(cfg["sgd_seeds"]):
        for name in SGD_PROTOCOLS:
            pts.append({"kind": "sgd", "protocol": name, "n": cfg["sgd_n"], "k": cfg["sgd_k"],
                        "alpha": cfg["sgd_alpha"], "seed": seed, "epochs": cfg["sgd_epochs"], "lr": cfg["sgd_lr"],
                        "batch": cfg["sgd_batch"], "leak": cfg["sgd_leak"], "rho_init": cfg["sgd_rho_init"],
                        "rho_high": cfg["sgd_rho_high"], "rho_low": cfg["sgd_rho_low"], "sigmas": cfg["sgd_sigmas"],
                        "draws": cfg["sgd_draws"]})
    return pts


def _norm_schedule(point: dict) -> tuple[float, float] | None:
    if point["protocol"] == FREE:
        return None
    if point["protocol"] == REDUCED:
        return (point["rho_high"], point["rho_low"])
    if point["protocol"] == INCREASED:
        return (point["rho_low"], point["rho_high"])
    raise ConfigError(f"unknown SGD protocol {point['protocol']!r}")


def run_point(point: dict) -> dict:
    import torch

    from ..perceptron import local_energy_binary, local_entropy, random_instance, teacher_instance

    torch.set_num_threads(1)
    kind = point["kind"]
    if kind == "curve":
        X, y, w_t = teacher_instance(point["n"], point["alpha"], seed=1000 + point["seed"])
        out: dict = {"ref": point["ref"]}
        if point["ref"] == "teacher":
            w, out["solver_seconds"], out["solved"], out["errors"] = w_t, 0.0, True, 0
        else:
            res, max_steps = _solve(X, y, point["ref"], point["seed"], point["budget"])
            w = res.w
            out.update({"solver_seconds": res.seconds, "solved": res.solved, "errors": res.errors, "steps": res.steps,
                        "max_steps": max_steps})
        if not out["solved"]:
            return out
        dist = _floats(point["distances"])
        grid = sorted(set(dist) | set(REPORT_D) | {DECISION_D})
        c = local_entropy(X, y, w, grid, n_gamma=point["n_gamma"], max_iters=point["bp_max_iters"],
                          tol=point["bp_tol"])
        out.update({"grid": grid, "S_grid": c.entropy.tolist(), "scan_d": c.scan_d.tolist(),
                    "scan_S": c.scan_S.tolist(), "scan_gamma": c.scan_gamma.tolist(),
                    "scan_converged": c.scan_converged.tolist(), "scan_iterations": c.scan_iterations.tolist(),
                    "bp_seconds": c.seconds})
        out["local_energy_d"] = [0.005, 0.01, 0.02, 0.05]
        out["local_energy"] = local_energy_binary(X, y, w, out["local_energy_d"], samples=point["le_samples"],
                                                  seed=point["seed"]).tolist()
        return out
    if kind == "success":
        X, y = random_instance(point["n"], point["alpha"], seed=2000 + point["seed"])
        t0 = time.perf_counter()
        res, max_steps = _solve(X, y, point["solver"], point["seed"], point["budget"])
        return {"solved": res.solved, "errors": res.errors, "steps": res.steps, "max_steps": max_steps,
                "seconds": time.perf_counter() - t0}
    if kind == "sgd":
        p = int(round(point["alpha"] * point["n"] * point["k"]))
        X, y = pm1_instance(point["n"], p, seed=3000 + point["seed"])
        res = train_committee(X, y, point["k"], point["epochs"], point["lr"], point["batch"], _norm_schedule(point),
                              seed=point["seed"], leak=point["leak"], rho_init=point["rho_init"])
        sig = _floats(point["sigmas"])
        le = committee_local_energy(X, y, res["W"], sig, point["draws"], seed=point["seed"], leak=point["leak"])
        return {"errors": res["errors"], "patterns": p, "loss": res["loss"], "rho": res["rho"],
                "kappa_min": res["kappa_min"], "sigmas": sig, "local_energy": le.tolist(), "seconds": res["seconds"],
                "history": res["history"]}
    raise ConfigError(f"unknown point kind {kind!r}")


# ---------------------------------------------------------------------------------------------- summary


def _h2(d):
    from ..perceptron.models import binary_entropy

    return binary_entropy(d)


def curve_value(result: Mapping[str, Any], d: float) -> tuple[float, str]:
    """(S(d), state) of a curve result at a distance of its grid: BP's interpolated value when ``"measured"``,
    the Legendre upper bound (:func:`legendre_upper_bound`) when ``"upper bound"``, NaN when ``"none"``."""
    grid = list(result["grid"])
    i = min(range(len(grid)), key=lambda j: abs(grid[j] - d))
    if abs(grid[i] - d) > 1e-12:
        raise ConfigError(f"distance {d} is not on the result's grid")
    scan = (result["scan_d"], result["scan_S"], result["scan_gamma"], result["scan_converged"])
    state = hull_state(*scan, [d])[0]
    if state == MEASURED and np.isfinite(result["S_grid"][i]):
        return float(result["S_grid"][i]), MEASURED
    if state == BOUND:
        return float(legendre_upper_bound(*scan, [d])[0]), BOUND
    return math.nan, NONE


def _fmt(value: float, state: str, digits: int = 4) -> str:
    if state == NONE or not np.isfinite(value):
        return "–"
    return f"{value:.{digits}f}" if state == MEASURED else f"≤ {value:.{digits}f}"


CURVE_CHECKS = [Check("solver found a solution (zero training errors)", lambda p, r: bool(r["solved"])),
                Check(f"S({DECISION_D:g}) inside the converged BP scan",
                      lambda p, r: curve_value(r, DECISION_D)[1] != NONE)]
SGD_CHECKS = [Check("zero training error at the end", lambda p, r: int(r["errors"]) == 0),
              Check("local energy finite", lambda p, r: all(np.isfinite(r["local_energy"])))]


def wide_outcome(solver: tuple[float, str], teacher: tuple[float, str], d: float = DECISION_D) -> str:
    """Whether a solution lands in a wide flat minimum at distance d: ``"yes"``, ``"no"`` or ``"undetermined"``.

    Claim: H2(d) - S_solver(d) < WIDE_FRACTION (H2(d) - S_teacher(d)). A bound (upper bound of S) gives a lower
    bound of the gap. yes: the solver's S is measured and its gap is below the fraction of the teacher's gap
    (measured, or its lower bound). no: the solver's gap (measured, or its lower bound) is at or above the
    fraction of the teacher's measured gap. Otherwise (or a value missing) undetermined."""
    (s, s_state), (t, t_state) = solver, teacher
    if NONE in (s_state, t_state):
        return "undetermined"
    h = float(_h2(d))
    gap_s, gap_t = h - s, h - t
    if s_state == MEASURED and gap_s < WIDE_FRACTION * gap_t:
        return "yes"
    if t_state == MEASURED and gap_s >= WIDE_FRACTION * gap_t:
        return "no"
    return "undetermined"


def narrower_outcome(sa: tuple[float, str], fbp: tuple[float, str]) -> str:
    """Whether simulated annealing's solution is narrower than fBP's on one instance: S_sa(d) < S_fbp(d).

    yes: fBP's S is measured and SA's (measured or its upper bound) is lower. no: SA's S is measured and
    not lower than fBP's (measured or bound). Otherwise undetermined."""
    (s, s_state), (f, f_state) = sa, fbp
    if NONE in (s_state, f_state):
        return "undetermined"
    if f_state == MEASURED and s < f:
        return "yes"
    if s_state == MEASURED and s >= f:
        return "no"
    return "undetermined"


def _curves(cfg: dict, results: list, out: Path, measured: dict) -> tuple[dict, list[str], Screened]:
    """Tables and figures of the curve points, the per-instance outcomes, and the excluded table."""
    curves = [(p, r) for p, r in results if p["kind"] == "curve"]
    scr = screen(curves, CURVE_CHECKS)
    tables, figures = {}, []
    kept = {(p["n"], p["seed"], p["ref"]): r for p, r in scr.kept}
    sizes = sorted({p["n"] for p, _ in curves}, reverse=True)
    h = float(_h2(DECISION_D))
    narrower = {"yes": 0, "no": 0, "undetermined": 0}
    for n_cur in sizes:
        wide: dict[str, dict[str, int]] = {}
        pts = [(p, r) for p, r in curves if p["n"] == n_cur]
        refs = [r for r in CURVE_REFS if any(p["ref"] == r for p, _ in pts)]
        seeds = sorted({p["seed"] for p, _ in pts})
        rows = ["| reference | instance | solved | steps / budget | " + " | ".join(f"S({d:g})" for d in REPORT_D)
                + f" | H2({DECISION_D:g}) − S({DECISION_D:g}) | local energy d=0.01 | d=0.05 | BP converged | solver s |",
                "|---|---|---|---|" + "---|" * len(REPORT_D) + "---|---|---|---|---|",
                "| H2(d) (perfectly flat) | | | | " + " | ".join(f"{float(_h2(d)):.4f}" for d in REPORT_D)
                + " | 0 | | | | |"]
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for i, ref in enumerate(refs):
            for seed in seeds:
                r = next((r for p, r in pts if p["ref"] == ref and p["seed"] == seed), None)
                if r is None:
                    continue
                steps = f"{r['steps']}/{r['max_steps']}" if "max_steps" in r else "–"
                if (n_cur, seed, ref) not in kept:
                    rows.append(f"| {ref} | {seed} | {'yes' if r.get('solved') else 'no'} | {steps} | "
                                + " | ".join("–" for _ in REPORT_D) + " | – | – | – | – | "
                                f"{r.get('solver_seconds', 0.0):.1f} |")
                    continue
                vals = [curve_value(r, d) for d in REPORT_D]
                sv, st = curve_value(r, DECISION_D)
                gap = "–" if st == NONE else (f"{h - sv:.4f}" if st == MEASURED else f"≥ {h - sv:.4f}")
                conv = f"{int(np.sum(r['scan_converged']))}/{len(r['scan_converged'])}"
                rows.append(f"| {ref} | {seed} | yes | {steps} | " + " | ".join(_fmt(v, s) for v, s in vals)
                            + f" | {gap} | {r['local_energy'][1]:.4f} | {r['local_energy'][3]:.4f} | {conv} | "
                            f"{r['solver_seconds']:.1f} |")
                _plot_scan(ax, ax2, r, f"C{i}", ref if seed == seeds[0] else None)
        for ref in WIDE_SOLVERS:
            if ref in refs:
                wide.setdefault(ref, {"yes": 0, "no": 0, "undetermined": 0})
        for seed in seeds:
            t = kept.get((n_cur, seed, "teacher"))
            tv = curve_value(t, DECISION_D) if t else (math.nan, NONE)
            for ref in WIDE_SOLVERS:
                if any(p["ref"] == ref for p, _ in pts):
                    s = kept.get((n_cur, seed, ref))
                    if s is None:
                        continue  # excluded (unsolved, or no value at the decision distance): counted in scr
                    wide[ref][wide_outcome(curve_value(s, DECISION_D), tv)] += 1
            sa, fb = kept.get((n_cur, seed, "sa")), kept.get((n_cur, seed, "fbp"))
            if sa is not None and fb is not None:
                narrower[narrower_outcome(curve_value(sa, DECISION_D), curve_value(fb, DECISION_D))] += 1
        measured[f"wide flat minima N={n_cur}"] = wide
        for ref in refs:
            rs = [r for p, r in pts if p["ref"] == ref]
            measured[f"solved {ref} N={n_cur}"] = f"{sum(bool(r.get('solved')) for r in rs)}/{len(rs)}"
            vals = [curve_value(r, DECISION_D) for key, r in kept.items() if key[0] == n_cur and key[2] == ref]
            if vals:
                measured[f"S({DECISION_D:g}) {ref} N={n_cur}"] = [{"value": v, "kind": s} for v, s in vals]
        grid = np.linspace(1e-4, 0.25, 200)
        ax.plot(grid, _h2(grid), "k--", lw=1, label="H2(d)")
        ax.set(xlim=(0, 0.25), ylim=(0, 0.6), xlabel="d", ylabel="S(d)")
        ax.set_title(f"BP local entropy, N={n_cur}, alpha={cfg['curve_alpha']} (dotted: a jump, values only bounded)",
                     fontsize=8)
        ax.legend(fontsize=7)
        ax2.set(xlim=(0, 0.25), xlabel="d", ylabel="H2(d) - S(d)")
        ax2.set_title("distance from a perfectly flat minimum (scan points)", fontsize=8)
        fig.tight_layout()
        fig_name = f"local_entropy_N{n_cur}.png"
        fig.savefig(out / fig_name, dpi=90)
        plt.close(fig)
        figures.append(fig_name)
        tables[f"local entropy of the solutions (teacher-student, BP, N={n_cur})"] = "\n".join(rows)
    # the existence claim is decided at the main size (finite-size effects are large at small N); SA, which
    # fails on the error count at the main size, is compared with fBP at every size where it found a solution
    measured["wide flat minima"] = measured.get(f"wide flat minima N={cfg['n']}", {})
    measured["sa narrower than fbp"] = narrower
    return tables, figures, scr


def _plot_scan(ax, ax2, r: Mapping[str, Any], color: str, label: str | None) -> None:
    """The converged scan points of one curve, joined by solid lines where measured, dotted across a hull."""
    d, s, c = (np.asarray(r[k], dtype=float) for k in ("scan_d", "scan_S", "scan_converged"))
    ok = c.astype(bool) & np.isfinite(s)
    o = np.argsort(d[ok])
    dd, ss = d[ok][o], s[ok][o]
    if len(dd) == 0:
        return
    mids = (dd[:-1] + dd[1:]) / 2
    states = hull_state(r["scan_d"], r["scan_S"], r["scan_gamma"], r["scan_converged"], mids) if len(dd) > 1 else []
    for j, state in enumerate(states):
        style = "-" if state == MEASURED else ":"
        ax.plot(dd[j : j + 2], ss[j : j + 2], style, color=color, lw=1)
        ax2.plot(dd[j : j + 2], _h2(dd[j : j + 2]) - ss[j : j + 2], style, color=color, lw=1)
    ax.plot(dd, ss, "o", ms=2.5, color=color, label=label)
    ax2.plot(dd, _h2(dd) - ss, "o", ms=2.5, color=color)


def _success(cfg: dict, results: list, out: Path, measured: dict) -> tuple[dict, list[str]]:
    succ = [(p, r) for p, r in results if p["kind"] == "success"]
    if not succ:
        return {}, []
    solvers = list(dict.fromkeys(p["solver"] for p, _ in succ))
    alphas = sorted({p["alpha"] for p, _ in succ})
    rows = ["| solver | budget (steps) | " + " | ".join(f"alpha={a:g}" for a in alphas)
            + " | steps of the successes / budget (median, max) | mean s |",
            "|---|---|" + "---|" * len(alphas) + "---|---|"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, s in enumerate(solvers):
        rates, cells = [], []
        for a in alphas:
            rr = [r for p, r in succ if p["solver"] == s and p["alpha"] == a]
            k = sum(bool(r["solved"]) for r in rr)
            rates.append(k / len(rr))
            cells.append(f"{k}/{len(rr)}")
        mine = [r for p, r in succ if p["solver"] == s]
        budget = mine[0].get("max_steps", 0)
        used = [r["steps"] / r["max_steps"] for r in mine if r["solved"] and r.get("max_steps")]
        frac = f"{np.median(used):.2f}, {max(used):.2f}" if used else "–"
        rows.append(f"| {s} | {budget} | " + " | ".join(cells) + f" | {frac} | "
                    f"{np.mean([r['seconds'] for r in mine]):.1f} |")
        ax.plot(alphas, rates, "o-", label=s, color=f"C{i}")
        measured[f"success {s}"] = {f"{a:g}": float(x) for a, x in zip(alphas, rates)}
        measured[f"success {s} budget used (max fraction)"] = float(max(used)) if used else None
    ax.set(xlabel="alpha = P / N", ylabel="success rate", ylim=(-0.05, 1.05))
    ax.set_title(f"random labels, N={cfg['success_n']}, {cfg['success_seeds']} instances per alpha, "
                 f"{cfg['solver_budget']:g}x default budget", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "success_rate.png", dpi=90)
    plt.close(fig)
    return {"success rate against alpha (random labels)": "\n".join(rows)}, ["success_rate.png"]


def _sgd(cfg: dict, results: list, out: Path, measured: dict) -> tuple[dict, list[str], Screened]:
    runs = [(p, r) for p, r in results if p["kind"] == "sgd"]
    scr = screen(runs, SGD_CHECKS)
    if not runs:
        return {}, [], scr
    sig = _floats(cfg["sgd_sigmas"])
    s_star = float(cfg["sgd_sigma"])
    i_star = sig.index(s_star)
    kept = {(p["seed"], p["protocol"]): r for p, r in scr.kept}
    every = {(p["seed"], p["protocol"]): r for p, r in runs}
    seeds = sorted({p["seed"] for p, _ in runs})
    rows = ["| protocol | zero training error | final norm rho | normalised margin | loss | "
            + " | ".join(f"local energy σ={s:g}" for s in sig) + " | s |",
            "|---|---|---|---|---|" + "---|" * len(sig) + "---|"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(SGD_PROTOCOLS):
        rr = [every[(s, name)] for s in seeds if (s, name) in every]
        ok = [kept[(s, name)] for s in seeds if (s, name) in kept]
        if not rr:
            continue
        if ok:
            le = np.array([r["local_energy"] for r in ok])
            mean, se = le.mean(0), (le.std(0, ddof=1) / math.sqrt(len(ok)) if len(ok) > 1 else np.zeros(len(sig)))
            cells = " | ".join(f"{m:.4f} ± {e:.4f}" for m, e in zip(mean, se))
            ax.errorbar(sig, mean, yerr=se, fmt="o-", color=f"C{i}", label=name, capsize=2)
            measured[f"sgd local energy({s_star:g}) {name}"] = float(mean[i_star])
        else:
            cells = " | ".join("–" for _ in sig)
        rows.append(f"| {name} | {len(ok)}/{len(rr)} | {np.mean([r['rho'] for r in rr]):.2f} | "
                    f"{np.mean([r['kappa_min'] for r in rr]):.3f} | {np.mean([r['loss'] for r in rr]):.4f} | {cells} | "
                    f"{np.mean([r['seconds'] for r in rr]):.1f} |")
    pair_rows = [f"| seed | free norm | norm slowly reduced | free − reduced (σ={s_star:g}) | pair |", "|---|---|---|---|---|"]
    diffs = []
    for s in seeds:
        f, r = every.get((s, FREE)), every.get((s, REDUCED))
        if f is None or r is None:
            continue
        both = (s, FREE) in kept and (s, REDUCED) in kept
        d = f["local_energy"][i_star] - r["local_energy"][i_star]
        if both:
            diffs.append(d)
        pair_rows.append(f"| {s} | {f['local_energy'][i_star]:.4f} ({f['errors']} err) | "
                         f"{r['local_energy'][i_star]:.4f} ({r['errors']} err) | {d:+.4f} | "
                         f"{'kept' if both else 'excluded'} |")
    m, se, n = mean_stderr(diffs)
    measured["sgd local energy free - reduced"] = {"sigma": s_star, "mean": m, "stderr": se, "n": n,
                                                   "differences": diffs}
    ax.set(xlabel="σ (multiplicative weight noise)", ylabel="training error after noise")
    ax.set_title(f"committee N={cfg['sgd_n']}, K={cfg['sgd_k']}, P={int(round(cfg['sgd_alpha'] * cfg['sgd_n'] * cfg['sgd_k']))}, "
                 f"runs at zero training error", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    if diffs:
        ax2.axhline(0, color="k", lw=0.8)
        ax2.plot(range(len(diffs)), diffs, "o", color="C0")
        if np.isfinite(se):
            ax2.axhspan(m - 2 * se, m + 2 * se, color="C0", alpha=0.2, label="mean ± 2 s.e.")
            ax2.legend(fontsize=7)
    ax2.set(xlabel="kept pair", ylabel=f"local energy free − reduced, σ={s_star:g}")
    ax2.set_title("paired differences (> 0: the reduced norm is flatter)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sgd_local_energy.png", dpi=90)
    plt.close(fig)
    tables = {"one-hidden-layer network, SGD on cross-entropy (mean ± s.e. over runs at zero training error)":
              "\n".join(rows), "paired local energies, free norm vs slowly reduced norm": "\n".join(pair_rows)}
    return tables, ["sgd_local_energy.png"], scr


def summarize(cfg: dict, results: list[tuple[dict, dict]], out: Path) -> Summary:
    measured: dict[str, Any] = {}
    tables, figures = {}, []
    t, f, curve_scr = _curves(cfg, results, out, measured)
    tables.update(t)
    figures += f
    t, f = _success(cfg, results, out, measured)
    tables.update(t)
    figures += f
    t, f, sgd_scr = _sgd(cfg, results, out, measured)
    tables.update(t)
    figures += f
    measured["excluded"] = {"curve": curve_scr.counts(), "sgd": sgd_scr.counts()}
    excl = "\n".join(x for x in (curve_scr.table(_describe), sgd_scr.table(_describe)) if x)
    if excl:
        tables["excluded points (failed a precondition)"] = excl
    return Summary(tables=tables, figures=figures, verdict=_verdict_text(measured), measured=measured, published={},
                   notes=NOTES)


def _describe(p: Mapping[str, Any]) -> str:
    keys = ("kind", "ref", "solver", "protocol", "n", "alpha", "seed")
    return ", ".join(f"{k}={p[k]}" for k in keys if k in p)


def _verdict_text(measured: Mapping[str, Any]) -> str:
    parts = []
    for ref, c in (measured.get("wide flat minima") or {}).items():
        parts.append(f"{WIDE_SOLVERS.get(ref, ref)}: in a wide flat minimum (H2 − S at d = {DECISION_D:g} below "
                     f"{WIDE_FRACTION:g} × the typical solution's) on {c['yes']} instance(s), not on {c['no']}, "
                     f"undetermined on {c['undetermined']}.")
    n = measured.get("sa narrower than fbp") or {}
    if sum(n.values()):
        parts.append(f"Simulated annealing narrower than fBP on {n['yes']} instance(s), not on {n['no']}, "
                     f"undetermined on {n['undetermined']}.")
    sg = measured.get("sgd local energy free - reduced")
    if sg and sg["n"]:
        parts.append(f"One-hidden-layer network: local energy at σ = {sg['sigma']:g} of free-norm SGD minus that "
                     f"of the slowly reduced norm = {sg['mean']:+.4f} ± {sg['stderr']:.4f} (s.e., {sg['n']} "
                     "pairs at zero training error); positive means the reduction gives flatter minima.")
    return " ".join(parts) or "Nothing measured."


NOTES = ("Curves: BP (Gaussian factor approximation) around each reference, gamma scan with warm starts in both "
         "directions (the fixed point with the larger free entropy kept), S(d) = phi - gamma q, interpolated "
         "from converged points only ('–' outside the scanned range). Across a jump of the scan (a first-order "
         "transition, e.g. around an isolated solution the BP fixed point stays frozen on the reference) the "
         "value is the concave hull of the scanned points: an upper bound of S(d), shown as '≤ x' and drawn "
         "dotted; it never counts as a measured local entropy. 'teacher' = the planted teacher of a "
         "teacher-student instance, distributed as a typical (equilibrium) solution. No published numbers are "
         "compared (no verified values); the claims are qualitative. Solver budgets: solver_budget times the "
         "library defaults by slower schedules (see solver_options); the success table gives the steps the "
         "successes used as a fraction of the budget. SGD: the norm-schedule parametrisation (geometric "
         "rho_high -> rho_low of every first-layer row, projected after each step) follows the brief of the "
         "paper's 'slow reduction of the norm'; the paper's exact schedule was not retrieved. Leaky ReLU units: "
         "with plain ReLU and no biases a pattern whose hidden units are all off has zero gradient and cannot "
         "be fitted; sgd_leak = 0 gives plain ReLU.")


# ---------------------------------------------------------------------------------------------- criterion


def _count_part(name: str, c: Mapping[str, int] | None, what: str) -> Part:
    if not c or not sum(c.values()):
        return Part(name, INCONCLUSIVE, f"{what}: no instance with both values measured")
    text = f"{what}: yes on {c['yes']}, no on {c['no']}, undetermined on {c['undetermined']} instance(s)"
    if c["no"]:
        return Part(name, FAIL, text)
    if c["undetermined"] or not c["yes"]:
        return Part(name, INCONCLUSIVE, text)
    return Part(name, PASS, text)


def decide(measured: Mapping[str, Any]) -> Verdict:
    """The verdict: a pure function of the measured numbers of :func:`summarize`."""
    parts = []
    wide = measured.get("wide flat minima") or {}
    for ref, label in WIDE_SOLVERS.items():  # a solver left out of curve_refs leaves its part inconclusive
        parts.append(_count_part(f"{label} lands in wide flat minima", wide.get(ref),
                                 f"H2 − S({DECISION_D:g}) < {WIDE_FRACTION:g} × the typical solution's"))
    parts.append(_count_part("simulated annealing finds narrower minima than fBP", measured.get("sa narrower than fbp"),
                             f"S_sa({DECISION_D:g}) < S_fbp({DECISION_D:g})"))
    sg = measured.get("sgd local energy free - reduced") or {}
    name = "slow norm reduction lowers the local energy (one-hidden-layer network)"
    short = not_enough(name, int(sg.get("n", 0) or 0), MIN_PAIRS, "seed pairs with both runs at zero training error")
    if short is not None:
        parts.append(short)
    else:
        mean, se = sg.get("mean"), sg.get("stderr")
        parts.append(below(name, -mean if isinstance(mean, (int, float)) else math.nan,
                           se if isinstance(se, (int, float)) else math.nan, 0.0,
                           what=f"local energy (σ={sg.get('sigma')}) reduced − free, {sg.get('n')} pairs"))
    return combine(parts)


RULE = (f"All parts must pass. (1) Wide flat minima exist and fBP, replicated SGD, entropy-driven MC and "
        f"cross-entropy MC land in them: on every teacher-student instance of the main size N = n where the solver "
        f"found a solution, its measured BP local entropy at d = {DECISION_D:g} satisfies H2(d) − S(d) < "
        f"{WIDE_FRACTION:g} × (H2(d) − S_teacher(d)), the planted teacher being a typical solution. Where the BP "
        f"scan jumps (a fixed point frozen on the reference, or the distance relative to a free weight's growing "
        f"more than {JUMP_FACTOR:g}-fold between two scan points), the concave-hull value is not a measurement: "
        f"S(d) is then only bounded above, by the Legendre bound min_γ [S_γ + 2γ (d − d_γ)]; the teacher's bound "
        f"counts (it bounds its gap from below), a solver's cannot establish the claim. Fails if an instance "
        f"contradicts it, inconclusive if one is undetermined or none was measured. (2) Simulated annealing on the "
        f"error count finds narrower minima: on every instance (either size) both solved, S_sa(d) < S_fbp(d) "
        f"(fBP's measured, SA's measured or its upper bound). (3) The issue's criterion: on the one-hidden-layer "
        f"network, the paired difference over seeds of the local energy at sgd_sigma (free norm − slowly reduced "
        f"norm), over pairs with both runs at zero training error, is positive by more than 2 standard errors "
        f"(PASS); an interval entirely ≤ 0 FAILS; fewer than {MIN_PAIRS} valid pairs or an interval containing 0: "
        f"INCONCLUSIVE.")


_DEFAULT = {"n": 1001, "curve_alpha": 0.4, "curve_seeds": 2, "small_n": 201, "small_seeds": 3,
            "curve_refs": ",".join(CURVE_REFS), "distances": "0.005,0.01,0.02,0.03,0.05,0.075,0.1,0.15,0.2",
            "n_gamma": 10, "le_samples": 200, "bp_max_iters": 150, "bp_tol": 1e-7, "solver_budget": 10.0,
            "success_n": 201, "success_solvers": "fbp,rsgd,le-mc,ce-mc,sa", "success_alphas": "0.3,0.5,0.6,0.7",
            "success_seeds": 4,
            "sgd_n": 100, "sgd_k": 10, "sgd_alpha": 0.3, "sgd_epochs": 500, "sgd_lr": 1.0, "sgd_batch": 20,
            "sgd_leak": 0.1, "sgd_rho_init": 1.0, "sgd_rho_high": 8.0, "sgd_rho_low": 2.0,
            "sgd_sigmas": "0.05,0.1,0.2,0.3,0.5", "sgd_sigma": 0.3, "sgd_draws": 200, "sgd_seeds": 5}

register(Study(
    name="wide-flat-minima",
    paper="Baldassi, Pittorino, Zecchina, PNAS 117:161 (2020); Baldassi et al., PNAS 113:E7655 (2016)",
    claim=("The error loss of the binary perceptron has rare wide flat minima (local entropy close to H2(d)) next to "
           "typical isolated solutions; entropic algorithms (focusing BP, replicated SGD, entropy-driven MC) and "
           "cross-entropy minimisers land in them, simulated annealing on the error count finds narrower ones; "
           "with continuous weights a slow reduction of the norm leads SGD on cross-entropy to wide flat minima."),
    scales={
        "default": dict(_DEFAULT),
        "paper": {**_DEFAULT, "n": 2001, "curve_seeds": 5, "small_n": 401, "small_seeds": 5,
                  "distances": "0.0025,0.005,0.01,0.02,0.03,0.05,0.075,0.1,0.15,0.2", "n_gamma": 24,
                  "le_samples": 500, "bp_max_iters": 1000, "success_n": 1001,
                  "success_alphas": "0.3,0.4,0.5,0.6,0.65,0.7,0.75,0.8", "success_seeds": 10,
                  "sgd_n": 200, "sgd_k": 20, "sgd_epochs": 1000, "sgd_draws": 500, "sgd_seeds": 10},
    },
    points=points,
    run_point=run_point,
    summarize=summarize,
    description=__doc__ or "",
    zero_turns_off=frozenset({"small_n", "sgd_leak"}),  # small_n = 0: no second size; sgd_leak = 0: plain ReLU
    criterion=Criterion(
        published=("Qualitative (no verified numbers): wide flat minima exist next to isolated typical solutions; "
                   "entropic algorithms and cross-entropy minimisers find them, SA narrower ones; 'a slow reduction "
                   "of the norm of the weights along the learning process also leads to WFM' (PNAS 117:161, 2020, "
                   "abstract)."),
        rule=RULE,
        decide=decide,
    ),
))
