"""Study ``flatness-vs-generalization``: does flatness rank trained networks by their test error?

Pittorino et al. (ICLR 2021) and Baldassi, Pittorino & Zecchina (PNAS 2020) measure the flatness of
minima by the local energy (the rise of the training error under multiplicative weight noise) and the
local entropy, and report that flatter minima generalise better and that the entropic optimizers
(Entropy-SGD, Replicated-SGD) find flatter minima than SGD. Here: deep(er) networks trained to a
minimum by many recipes, each measured, and the rank correlation of each measure with the test error.

Protocol (``default`` scale)
----------------------------
* Data: Fashion-MNIST, one class-balanced training subset of 4 096 examples (the same for every model),
  the full 10 000-example test set. Network: MLP 784-128-10, ReLU (101 770 parameters).
* 23 training recipes (:data:`MODELS`) chosen for a deliberately wide spread of generalization: SGD with
  batch size 16 to 2048 (2048 is half the training set), learning rate 0.005 to 0.2, with and without
  momentum, with weight decay 5e-4 and 2e-3; Adam (batch 128 and 2048); SAM (rho 0.05, 0.1, 0.2);
  Entropy-SGD (coupling 0.03 x100 and 0.3 x10, batch 128 and 512) and Replicated-SGD (3 replicas,
  coupling 0.01 x300 and 0.1 x30); 2 seeds each (the seed sets the initialisation and the minibatch
  order): 46 models.
* Training to the precondition: a constant learning rate (no schedule); the training error on the
  whole training subset is evaluated after every effective epoch (gradient evaluations / minibatches per
  epoch; an Entropy-SGD step with L = 5 inner steps costs 5, a Replicated-SGD step with 3 replicas 3, a
  SAM step 2), and training stops at the first evaluation with training error <= 0.5 %, within at most
  300 effective epochs. The couplings of the entropic optimizers grow exponentially by their factor over
  that maximum budget. A model that does not reach the target is *excluded* (counted and listed), never
  compared; so is one whose Lanczos solver fails.
* On each model that met the precondition, on its training subset:

  - **local energy** (ICLR 2021, multiplicative): dE(sigma) = E_eps[train error(w * (1 + sigma eps))] -
    train error(w), eps ~ N(0, I) independently per parameter (biases included), at sigma = 0.05, 0.1,
    ..., 0.5, 128 draws shared by all sigmas and all models (common random numbers), estimated by the local
    reparameterisation trick (exact in law for this MLP and the same expectation as perturbing whole
    copies; :mod:`flatminima.measures.local_energy`). Summary, fixed before the run: the **area under
    dE(sigma) over [0, 0.5] divided by 0.5** (the mean rise of the training error over that range,
    trapezoid rule with dE(0) = 0). The whole curve is stored.
  - **top Hessian eigenvalue** of the training cross-entropy (restarted Lanczos, relative tol 1e-4);
  - **Hessian trace** of the training cross-entropy (Hutch++, 99 products, with its standard error).

Local entropy: not measured, on purpose. The package's estimator
(:mod:`flatminima.measures.local_entropy`) couples the *absolute* displacement, gamma |w' - w|^2 / 2,
so its value depends on the weights' scale and follows the Hessian's log-determinant, unlike the local
energy. A coupling on the *relative* displacement u (w' = w * (1 + u)) would put it on the local energy's
scale, but at the Bayesian temperature beta = number of examples and couplings gamma = 1 / sigma^2 in
the local energy's range the loss barely constrains u (a trial on this network with beta = 1 024
examples: <|u|^2> within 0.1 % of the free value 1 / gamma at gamma = 30, F/N = -4e-4 ± 1e-4, dominated
by -beta f(w) / N), so to first order F(gamma) = -beta (f(w) + loss local energy at sigma =
1 / sqrt(gamma)): the local energy again, in other units. The regime where it differs (beta of order
N / dE, a strong constraint) needs about 10^3 times more Langevin steps per coupling than this budget
(a relaxation time is (beta lambda_u + gamma) / (lr gamma) steps). (The ICLR 2021 abstract says its
schedules find flatter minima "using both flatness measures"; how it estimated the local entropy of deep
networks is not recorded here [U].)

Decision (fixed before the run, :data:`CRITERION`): at least 24 models met the precondition, and the
Kendall tau between the local energy and the test error over them is >= 0.3 with p < 0.05. Reported,
not decided: tau and p of every measure, the worst training error per optimizer, and each measure's
ranking of the optimizers (mean over each optimizer's models; Entropy-SGD and Replicated-SGD against SGD).

Scales
------
* ``demo`` (``make demo``): the same 23 recipes x 2 seeds on 2 048 examples with an MLP 784-64-10, 64
  local-energy draws, 40 trace products: about 4.5 CPU-minutes, under 3 minutes with two workers.
* ``default``: the protocol above (about 15 CPU-minutes, 8 minutes with two workers; the report records
  the compute time).
* ``paper``: the papers' setting as far as this package reaches (no CIFAR-10 loader): all 60 000
  Fashion-MNIST training examples, the LeNet-5 CNN, every recipe, 3 seeds, 256 local-energy draws by
  perturbed copies (the local reparameterisation is exact only for MLPs), 150 trace products; for a GPU
  or a cluster (``--dask``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .claims import Check, Criterion, Screened, Verdict, combine, correlation, kendall, mean_stderr, not_enough, screen
from .common import fashion_subset
from .registry import Study, Summary, register

PAPER = ("Pittorino et al., Entropic gradient descent algorithms and wide flat minima (ICLR 2021); Baldassi, "
         "Pittorino & Zecchina, Shaping the learning landscape in neural networks around wide flat minima "
         "(PNAS 2020)")
CLAIM = ("Flatness measured by the local energy (the rise of the training error under multiplicative weight "
         "noise) predicts generalization across trained networks: flatter minima have lower test error; and the "
         "entropic optimizers (Entropy-SGD, Replicated-SGD) find flatter minima than SGD.")

#: models that must meet the precondition for a decision; the claimed strength of the rank correlation
MIN_MODELS = 24
TAU_CLAIM = 0.3
ALPHA = 0.05

_ESGD = {"inner_steps": 5, "inner_lr": 0.1, "noise": 1e-4, "alpha": 0.75, "gamma": 0.03, "gscale": False}
_RSGD = {"replicas": 3, "nesterov": True, "gamma": 0.01, "gamma_max": 10.0}
_NEST = {"nesterov": True}

#: (label, optimizer, batch size, hyperparameters): the training recipes. ``gamma_factor``: the coupling of
#: an entropic optimizer grows by this total factor over the maximum budget.
MODELS: list[tuple[str, str, int, dict[str, Any]]] = [
    ("sgd b16 lr0.1", "sgd", 16, {"lr": 0.1, "momentum": 0.0, "options": {}}),
    ("sgd b16 lr0.02", "sgd", 16, {"lr": 0.02, "momentum": 0.0, "options": {}}),
    ("sgd b16 lr0.005", "sgd", 16, {"lr": 0.005, "momentum": 0.0, "options": {}}),
    ("sgd b64 lr0.1", "sgd", 64, {"lr": 0.1, "momentum": 0.0, "options": {}}),
    ("sgd b128 lr0.05 m0.9", "sgd", 128, {"lr": 0.05, "momentum": 0.9, "options": dict(_NEST)}),
    ("sgd b128 lr0.01 m0.9", "sgd", 128, {"lr": 0.01, "momentum": 0.9, "options": {}}),
    ("sgd b512 lr0.05 m0.9", "sgd", 512, {"lr": 0.05, "momentum": 0.9, "options": {}}),
    ("sgd b1024 lr0.02 m0.9", "sgd", 1024, {"lr": 0.02, "momentum": 0.9, "options": {}}),
    ("sgd b2048 lr0.2 m0.9", "sgd", 2048, {"lr": 0.2, "momentum": 0.9, "options": {}}),
    ("sgd b2048 lr0.05 m0.9", "sgd", 2048, {"lr": 0.05, "momentum": 0.9, "options": {}}),
    ("sgd b128 wd5e-4", "sgd", 128, {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "options": dict(_NEST)}),
    ("sgd b128 wd2e-3", "sgd", 128, {"lr": 0.05, "momentum": 0.9, "weight_decay": 2e-3, "options": dict(_NEST)}),
    ("adam b128 lr1e-3", "adam", 128, {"lr": 1e-3, "momentum": 0.0, "options": {}}),
    ("adam b2048 lr1e-3", "adam", 2048, {"lr": 1e-3, "momentum": 0.0, "options": {}}),
    ("adam b2048 lr3e-3", "adam", 2048, {"lr": 3e-3, "momentum": 0.0, "options": {}}),
    ("sam b128 rho0.05", "sam", 128, {"lr": 0.05, "momentum": 0.9, "options": {**_NEST, "rho": 0.05}}),
    ("sam b128 rho0.1", "sam", 128, {"lr": 0.05, "momentum": 0.9, "options": {**_NEST, "rho": 0.1}}),
    ("sam b128 rho0.2", "sam", 128, {"lr": 0.05, "momentum": 0.9, "options": {**_NEST, "rho": 0.2}}),
    ("esgd b128 g0.03x100", "entropy-sgd", 128, {"lr": 1.0, "momentum": 0.0, "gamma_factor": 100.0,
                                                 "options": dict(_ESGD)}),
    ("esgd b128 g0.3x10", "entropy-sgd", 128, {"lr": 1.0, "momentum": 0.0, "gamma_factor": 10.0,
                                               "options": {**_ESGD, "gamma": 0.3}}),
    ("esgd b512 g0.03x100", "entropy-sgd", 512, {"lr": 1.0, "momentum": 0.0, "gamma_factor": 100.0,
                                                 "options": dict(_ESGD)}),
    ("rsgd b128 g0.01x300", "replicated-sgd", 128, {"lr": 0.05, "momentum": 0.9, "gamma_factor": 300.0,
                                                    "options": dict(_RSGD)}),
    ("rsgd b128 g0.1x30", "replicated-sgd", 128, {"lr": 0.05, "momentum": 0.9, "gamma_factor": 30.0,
                                                  "options": {**_RSGD, "gamma": 0.1}}),
]
_LABELS = [m[0] for m in MODELS]

_COMMON: dict[str, Any] = {"models": list(_LABELS), "seeds": 2, "target_train_error": 0.005, "max_epochs": 300.0,
                           "le_sigmas": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5], "top_tol": 1e-4}

SCALES: dict[str, dict[str, Any]] = {
    "demo": {**_COMMON, "train_subset": 2048, "model": "mlp:64", "le_samples": 64, "trace_matvecs": 40},
    "default": {**_COMMON, "train_subset": 4096, "model": "mlp:128", "le_samples": 128, "trace_matvecs": 99},
    "paper": {**_COMMON, "train_subset": 0, "model": "lenet", "seeds": 3, "le_samples": 256, "trace_matvecs": 150},
}

_POINT_KEYS = ("train_subset", "model", "max_epochs", "target_train_error", "le_sigmas", "le_samples", "top_tol",
               "trace_matvecs")


def points(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per (recipe named in ``cfg["models"]``, seed < ``cfg["seeds"]``); ConfigError for an unknown
    recipe or a sigma grid that is not increasing and positive."""
    unknown = [m for m in cfg["models"] if m not in _LABELS]
    if unknown or not cfg["models"]:
        raise ConfigError(f"models must name recipes of this study; unknown: {unknown}; known: {_LABELS}")
    sig = cfg["le_sigmas"]
    if not sig or sig[0] <= 0 or any(b <= a for a, b in zip(sig, sig[1:])):
        raise ConfigError(f"le_sigmas must be positive and increasing, got {sig}")
    return [{"label": label, "optimizer": opt, "batch_size": batch, "hyper": hyper, "seed": seed,
             **{k: cfg[k] for k in _POINT_KEYS}}
            for label, opt, batch, hyper in MODELS if label in cfg["models"] for seed in range(cfg["seeds"])]


# ---- training to the precondition -----------------------------------------------------------------------


class _TargetReached(Exception):
    """Raised by the evaluation callback to end training at the first evaluation meeting the target."""


def train_to_target(model, ds, optimizer: str, hyper: dict[str, Any], batch_size: int, seed: int, target: float,
                    max_epochs: float, test_examples: int = 256) -> dict[str, Any]:
    """Train ``model`` (in place) at a constant learning rate until its training error is <= ``target``.

    The training error is evaluated on the whole training set after every effective epoch (gradient
    evaluations / minibatches per epoch); training stops at the first evaluation at or below ``target``,
    or after ``max_epochs`` effective epochs. ``batch_size`` above the training set size means the full
    batch. ``hyper``: ``lr``, ``momentum``, optional ``weight_decay``, ``options`` (optimizer-specific)
    and ``gamma_factor`` (the coupling grows by this total factor over ``max_epochs``). During training
    only the first ``test_examples`` test examples are evaluated (the caller measures the test error).

    Returns ``{"converged", "effective_epochs", "steps", "train_error", "train_loss"}``, the last two on
    the whole training set at the stopping evaluation.
    """
    from ..optim.registry import build_optimizer, grad_evals_per_step
    from ..train import fit

    if not 0 <= target < 1 or not max_epochs > 0:
        raise ConfigError(f"need 0 <= target < 1 and max_epochs > 0, got {target}, {max_epochs}")
    n = int(ds.X_train.shape[0])
    batch = min(int(batch_size), n)
    spe = max(1, n // batch)
    options = dict(hyper.get("options", {}))
    cost = grad_evals_per_step(optimizer, options)
    max_steps = max(1, math.ceil(max_epochs * spe) // cost)
    if "gamma_factor" in hyper:
        options["scoping"] = hyper["gamma_factor"] ** (1.0 / max_steps) - 1.0
    opt = build_optimizer(optimizer, model, lr=hyper["lr"], momentum=hyper["momentum"],
                          weight_decay=hyper.get("weight_decay", 0.0), **options)
    rows: list[dict[str, float]] = []

    def stop_at_target(row: dict[str, float]) -> None:
        rows.append(row)
        if row["train_error"] <= target:
            raise _TargetReached

    data = ((ds.X_train, ds.y_train), (ds.X_test[:test_examples], ds.y_test[:test_examples]))
    try:
        fit(model, data, opt, grad_evals=max_steps * cost, batch_size=batch, seed=seed,
            eval_every=max(1, spe // cost), eval_train_examples=None, progress=False, callbacks=[stop_at_target])
    except _TargetReached:
        pass
    last = rows[-1]
    return {"converged": bool(last["train_error"] <= target), "effective_epochs": float(last["effective_epochs"]),
            "steps": int(last["step"]), "train_error": float(last["train_error"]),
            "train_loss": float(last["train_loss"])}


def local_energy_area(sigmas: Sequence[float], delta: Sequence[float]) -> float:
    """Area under dE(sigma) over [0, sigma_max] divided by sigma_max (trapezoid rule, dE(0) = 0): the mean rise
    of the training error over the range. sigmas (S,) increasing, delta (S,)."""
    import numpy as np

    s = np.concatenate([[0.0], np.asarray(sigmas, dtype=float)])
    d = np.concatenate([[0.0], np.asarray(delta, dtype=float)])
    if s.size < 2 or np.any(np.diff(s) <= 0):
        raise ConfigError("sigmas must be positive and increasing")
    return float(np.sum(0.5 * (d[1:] + d[:-1]) * np.diff(s)) / s[-1])


# ---- one model -------------------------------------------------------------------------------------------------


def run_point(p: dict[str, Any]) -> dict[str, Any]:
    """Train one model to the target training error, then, if it got there, measure its flatness.

    Returns the training outcome (``converged``, ``effective_epochs``, ``steps``, ``train_error``,
    ``train_loss`` on the training subset, ``test_error``, ``test_loss`` on the full test set) and the
    measures, NaN when not converged or when the solver failed (``failures`` says why):
    ``local_energy`` (:func:`local_energy_area`; the curve in ``local_energy_curve``), ``top_eigenvalue``,
    ``trace`` (and ``trace_stderr``).
    """
    import numpy as np
    import torch

    from .. import models
    from ..errors import ConvergenceError
    from ..landscape import Landscape
    from ..measures import hessian, local_energy
    from ..train import evaluate, per_example_loss

    ds = fashion_subset(p["train_subset"])
    torch.manual_seed(p["seed"])
    model = models.build(p["model"], ds.input_shape, ds.n_classes)
    trained = train_to_target(model, ds, p["optimizer"], p["hyper"], p["batch_size"], p["seed"],
                              p["target_train_error"], p["max_epochs"])
    test_loss, test_error = evaluate(model, ds.X_test, ds.y_test, per_example_loss("cross_entropy"))
    nan = float("nan")
    out: dict[str, Any] = {**trained, "test_error": float(test_error), "test_loss": float(test_loss),
                           "n_params": sum(q.numel() for q in model.parameters()),
                           "batch_used": min(p["batch_size"], int(ds.X_train.shape[0])),
                           "local_energy": nan, "top_eigenvalue": nan, "trace": nan, "failures": []}
    if not trained["converged"]:
        return out

    land = Landscape(model, (ds.X_train, ds.y_train))
    theta = land.theta
    le = local_energy.local_energy(land, theta, sigmas=np.asarray(p["le_sigmas"], dtype=float),
                                   n_samples=p["le_samples"], kind="multiplicative", measure="error", seed=1234,
                                   method="auto")
    out["local_energy"] = local_energy_area(le.sigmas, le.delta)
    out["local_energy_curve"] = le.to_dict()
    try:
        top = hessian.top_eigenvalues(land, theta, k=1, tol=p["top_tol"], max_matvecs=1000, return_vectors=False)
        out["top_eigenvalue"], out["top_matvecs"] = float(top.values[0]), int(top.matvecs)
    except ConvergenceError as exc:
        out["failures"].append(f"top eigenvalue: {' '.join(str(exc).split())}")
    tr = hessian.trace(land, theta, matvecs=p["trace_matvecs"], method="hutch++")
    out["trace"], out["trace_stderr"] = float(tr.value), float(tr.stderr)
    return out


# ---- preconditions, statistics, decision -------------------------------------------------------------------

#: (key, label): the measures; for each, larger = sharper, expected to go with a larger test error
MEASURES: list[tuple[str, str]] = [
    ("local_energy", "local energy (mean dE, sigma in [0, 0.5])"),
    ("top_eigenvalue", "top Hessian eigenvalue"),
    ("trace", "Hessian trace"),
]
ENTROPIC = ("entropy-sgd", "replicated-sgd")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


CHECKS = [
    Check("training error <= target within the budget",
          lambda p, r: bool(r["converged"]) and r["train_error"] <= p["target_train_error"]),
    Check("every measure computed", lambda p, r: all(_finite(r[k]) for k, _ in MEASURES)),
]


def screen_models(results: Sequence[tuple[dict, dict]]) -> Screened:
    """Split (point, result) pairs into the models that met the precondition (training error <= target,
    every measure computed) and the excluded ones, counted by the check they failed."""
    return screen(results, CHECKS)


def decide(measured: Mapping[str, Any]) -> Verdict:
    """At least ``MIN_MODELS`` models met the precondition, and Kendall tau(local energy, test error) >=
    ``TAU_CLAIM`` with p < ``ALPHA``; FAIL when tau's 95 % bootstrap interval lies below ``TAU_CLAIM`` or tau
    is significantly negative (:func:`~flatminima.studies.claims.correlation`)."""
    n = int(measured.get("n_models", 0))
    parts = [p for p in [not_enough("models", n, MIN_MODELS, "models that met the precondition")] if p]
    t = measured.get("kendall_tau", {}).get("local_energy", {})
    parts.append(correlation("local energy predicts test error", t.get("tau"), t.get("p"), n, TAU_CLAIM, ALPHA,
                             upper=t.get("upper"), lower=t.get("lower"), what="Kendall τ(local energy, test error)"))
    return combine(parts)


CRITERION = Criterion(
    published=("Flatter minima generalise better, by the local energy and the local entropy (Pittorino et al., ICLR "
               "2021; Baldassi et al., PNAS 2020). The papers give no rank correlation: the threshold is this "
               "study's."),
    rule=(f"PASS when at least {MIN_MODELS} models reached training error <= 0.5 % and the Kendall τ between their "
          f"local energy (mean rise of the training error over sigma in [0, 0.5], multiplicative noise) and their "
          f"test error is >= {TAU_CLAIM} with p < {ALPHA}. FAIL when the 95 % bootstrap interval of τ lies below "
          f"{TAU_CLAIM}, or τ < 0 with p < {ALPHA}. Otherwise, or with fewer than {MIN_MODELS} models, "
          "INCONCLUSIVE. Reported, not decided: τ and p of every measure, and each measure's ranking of the "
          "optimizers."),
    decide=decide,
)


def optimizer_ranking(kept: Sequence[tuple[dict, dict]]) -> dict[str, Any]:
    """Per optimizer, mean ± s.e. of the test error and of each measure over its models; and for each entropic
    optimizer and measure, the difference of means to SGD (negative: flatter) with its standard error,
    ``flatter`` (difference < 0) and ``clearly`` (difference + 2 s.e. < 0)."""
    fams: dict[str, list[Mapping[str, Any]]] = {}
    for p, r in kept:
        fams.setdefault(p["optimizer"], []).append(r)
    stats: dict[str, dict[str, list[float]]] = {}
    for fam, rs in fams.items():
        stats[fam] = {k: list(mean_stderr(r[k] for r in rs)) for k in ["test_error"] + [m for m, _ in MEASURES]}
    vs_sgd: dict[str, dict[str, Any]] = {}
    for fam in ENTROPIC:
        if fam not in stats or "sgd" not in stats:
            continue
        vs_sgd[fam] = {}
        for k, _ in MEASURES:
            (m1, s1, _), (m0, s0, _) = stats[fam][k], stats["sgd"][k]
            se = math.hypot(s1, s0)
            vs_sgd[fam][k] = {"diff": m1 - m0, "stderr": se, "flatter": bool(m1 < m0),
                              "clearly": bool(math.isfinite(se) and m1 - m0 + 2 * se < 0)}
    return {"per_optimizer": stats, "entropic_vs_sgd": vs_sgd}


def _fmt(m: float, se: float) -> str:
    return f"{m:.4g} ± {se:.2g}" if math.isfinite(se) else f"{m:.4g}"


def summarize(cfg: dict[str, Any], results: list[tuple[dict, dict]], out: Path) -> Summary:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = {"sgd": "tab:blue", "adam": "tab:orange", "sam": "tab:green", "entropy-sgd": "tab:red",
              "replicated-sgd": "tab:purple"}
    scr = screen_models(results)
    kept = scr.kept
    test = np.array([r["test_error"] for _, r in kept], dtype=float)
    nan_k = {"tau": math.nan, "p": math.nan, "n": len(kept), "lower": math.nan, "upper": math.nan}

    taus: dict[str, Any] = {}
    trows = ["| measure | Kendall τ with test error | p-value | 95 % bootstrap interval | models |",
             "|---|---|---|---|---|"]
    for key, label in MEASURES:
        k = kendall([r[key] for _, r in kept], test) if len(kept) >= 3 else dict(nan_k)
        taus[key] = k
        trows.append(f"| {label} | {k['tau']:+.3f} | {k['p']:.2g} | [{k['lower']:+.2f}, {k['upper']:+.2f}] | "
                     f"{k['n']} |")
    for a, b in (("local_energy", "top_eigenvalue"), ("local_energy", "trace")):
        k = kendall([r[a] for _, r in kept], [r[b] for _, r in kept]) if len(kept) >= 3 else dict(nan_k)
        taus[f"{a}_vs_{b}"] = k
        trows.append(f"| (agreement) {a.replace('_', ' ')} vs {b.replace('_', ' ')} | {k['tau']:+.3f} | "
                     f"{k['p']:.2g} | [{k['lower']:+.2f}, {k['upper']:+.2f}] | {k['n']} |")

    ranking = optimizer_ranking(kept)
    stats = ranking["per_optimizer"]
    frows = ["| optimizer | models | test error | " + " | ".join(lab for _, lab in MEASURES) + " |",
             "|---|---|---|" + "---|" * len(MEASURES)]
    for fam in sorted(stats, key=lambda f: stats[f]["local_energy"][0]):
        frows.append(f"| {fam} | {stats[fam]['test_error'][2]} | {_fmt(*stats[fam]['test_error'][:2])} | "
                     + " | ".join(_fmt(*stats[fam][k][:2]) for k, _ in MEASURES) + " |")
    for fam, d in ranking["entropic_vs_sgd"].items():
        frows.append(f"| {fam} − sgd | | | " + " | ".join(
            f"{d[k]['diff']:+.3g} ± {d[k]['stderr']:.2g} ({'flatter' if d[k]['flatter'] else 'sharper'}"
            f"{', 2 s.e.' if d[k]['clearly'] else ''})" for k, _ in MEASURES) + " |")

    prow = ["| optimizer | models | met the precondition | worst training error (kept) | effective epochs (kept) |",
            "|---|---|---|---|---|"]
    worst: dict[str, float] = {}
    for fam in sorted({p["optimizer"] for p, _ in results}):
        n_all = sum(1 for p, _ in results if p["optimizer"] == fam)
        km = [r for p, r in kept if p["optimizer"] == fam]
        worst[fam] = max((r["train_error"] for r in km), default=math.nan)
        ep = [r["effective_epochs"] for r in km]
        prow.append(f"| {fam} | {n_all} | {len(km)} | {worst[fam]:.4f} | "
                    f"{f'{min(ep):.0f} to {max(ep):.0f}' if ep else '—'} |")

    rows = ["| model | seed | optimizer | effective epochs | train error | test error | local energy | top eigenvalue "
            "| trace |", "|---|---|---|---|---|---|---|---|---|"]
    for p, r in sorted(kept, key=lambda pr: pr[1]["test_error"]):
        rows.append(f"| {p['label']} | {p['seed']} | {p['optimizer']} | {r['effective_epochs']:.0f} | "
                    f"{r['train_error']:.4f} | {r['test_error']:.4f} | {r['local_energy']:.4f} | "
                    f"{r['top_eigenvalue']:.4g} | {r['trace']:.4g} ± {r['trace_stderr']:.2g} |")

    tables = {"precondition": "\n".join(prow), "kendall_tau": "\n".join(trows), "optimizers": "\n".join(frows),
              "models": "\n".join(rows)}
    excluded = scr.table(lambda p: f"{p['label']} seed {p['seed']}")
    if excluded:
        tables["excluded"] = excluded

    fig, ax = plt.subplots(figsize=(6, 4))
    for p, r in kept:
        le = r["local_energy_curve"]
        ax.errorbar(le["sigmas"], le["delta"], yerr=le["stderr"], color=colors.get(p["optimizer"], "k"),
                    alpha=0.6, lw=1, capsize=2, label=p["optimizer"])
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    if handles:
        ax.legend(handles.values(), handles.keys(), fontsize=8)
    ax.set_xlabel("sigma (multiplicative noise)")
    ax.set_ylabel("local energy: rise of the training error")
    ax.set_title(f"local energy curves, {len(kept)} models")
    fig.tight_layout()
    fig.savefig(out / "local_energy_curves.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.8))
    for ax, (key, label) in zip(axes, MEASURES):
        for p, r in kept:
            ax.scatter(r[key], r["test_error"], color=colors.get(p["optimizer"], "k"), s=22, label=p["optimizer"])
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("test error")
        ax.set_title(f"τ = {taus[key]['tau']:+.2f} (p = {taus[key]['p']:.2g})", fontsize=9)
        if key != "local_energy" and kept and all(r[key] > 0 for _, r in kept):
            ax.set_xscale("log")
    handles = dict(zip(*reversed(axes[0].get_legend_handles_labels())))
    if handles:
        axes[0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "measures_vs_test_error.png", dpi=110)
    plt.close(fig)

    vs = ranking["entropic_vs_sgd"]
    rank_text = "; ".join(
        f"{fam} vs SGD: " + ", ".join(f"{k.replace('_', ' ')} {'flatter' if d[k]['flatter'] else 'sharper'}"
                                      f"{' (beyond 2 s.e.)' if d[k]['clearly'] else ''}" for k, _ in MEASURES)
        for fam, d in vs.items()) or "no entropic or no SGD model met the precondition"
    le_t = taus["local_energy"]
    span = f"{test.min():.4f} to {test.max():.4f}" if test.size else "none"
    verdict = (f"{len(kept)} of {len(results)} models reached training error <= {cfg['target_train_error']:.1%} "
               f"and were measured (test errors {span}). Kendall τ(local energy, test error) = {le_t['tau']:+.3f} "
               f"(p = {le_t['p']:.2g}); top Hessian eigenvalue {taus['top_eigenvalue']['tau']:+.3f} "
               f"(p = {taus['top_eigenvalue']['p']:.2g}), Hessian trace {taus['trace']['tau']:+.3f} "
               f"(p = {taus['trace']['p']:.2g}). Optimizers: {rank_text}.")
    notes = (f"Data: Fashion-MNIST, {cfg['train_subset'] or 60000} training examples (class-balanced), the 10 000 "
             f"test examples; network {cfg['model']}. Training: constant learning rate, stopped at the first "
             f"effective epoch with training error <= {cfg['target_train_error']:.1%} on the whole training set, "
             f"at most {cfg['max_epochs']:g} effective epochs; a model that does not get there is excluded "
             "(table 'excluded' when any is). A batch larger than the training set is the full batch. Local "
             f"energy: multiplicative Gaussian noise on every parameter, {cfg['le_samples']} draws with common "
             "random numbers, the training error, local reparameterisation for MLPs (perturbed copies otherwise). "
             "Local entropy is not measured: see the study's description (its additive-coupling estimator is "
             "not on the local energy's scale; the multiplicative one reduces to the local energy at an "
             "affordable temperature). The optimizer table averages over recipes chosen to spread "
             "generalization, not tuned per optimizer: it ranks what these recipes find.")
    measured = {"n_models": len(kept), "n_total": len(results), "excluded": scr.counts(), "kendall_tau": taus,
                "worst_train_error": worst, "optimizers": ranking,
                "test_error_range": [float(test.min()), float(test.max())] if test.size else []}
    return Summary(tables=tables, figures=["local_energy_curves.png", "measures_vs_test_error.png"],
                   verdict=verdict, measured=measured, published={}, notes=notes)


register(Study(name="flatness-vs-generalization", paper=PAPER, claim=CLAIM, scales=SCALES, points=points,
               run_point=run_point, summarize=summarize, description=__doc__ or "", criterion=CRITERION))
