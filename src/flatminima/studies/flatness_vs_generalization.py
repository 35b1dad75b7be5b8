"""Study ``flatness-vs-generalization``: do flatness measures rank trained networks by their test error?

Pittorino et al. (ICLR 2021) measure, for networks trained by SGD and by the entropic optimizers, the
local energy delta E(sigma) (rise of the training error under multiplicative weight noise) and the local
entropy, and report that (i) the two flatness measures agree, (ii) flatter minima generalise better, and
(iii) Entropy-SGD and Replicated-SGD find flatter minima than SGD.

Protocol (``default`` scale, about 10 minutes of one CPU core; say so when quoting it):
Fashion-MNIST, a class-balanced 2 000-example training subset (the same for every model), the full
10 000-example test set; a one-hidden-layer MLP 784-32-10 (25 450 parameters); 14 models that differ by
optimizer (SGD, SGD + weight decay, Adam, SAM, Entropy-SGD, Replicated-SGD) and hyperparameters (learning
rate, batch size, rho, coupling), every one with the same budget of minibatch gradient evaluations and a
per-step cosine learning rate. Hyperparameters of the entropic optimizers are those of the
``compare-optimizers`` study. On each trained model, on the first 1 000 training examples (common to all):

* local energy delta E(sigma), multiplicative, of the training error, 6 sigmas, 64 draws shared by all
  sigmas and all models (common random numbers); summarised by its area over sigma in [0, 0.5];
* top Hessian eigenvalue of the cross-entropy loss (restarted Lanczos, relative tol 1e-4);
* Hessian trace (Hutch++, 60 products);
* local free entropy per parameter F(gamma)/N at beta = 1 000 on a common ladder of gamma (SGLD +
  thermodynamic integration, :mod:`flatminima.measures.local_entropy`); larger = flatter.

Then Kendall tau of each measure with the test error across the 14 models, and of local energy with
local entropy. ``paper`` scale: full 60 000 training set, a 2-layer MLP of width 512, 10x the budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import fashion_subset, train_at_budget
from .registry import Study, Summary, register

PAPER = "Pittorino et al., Entropic gradient descent algorithms and wide flat minima (ICLR 2021)"
CLAIM = ("Local energy and local entropy agree with each other and predict generalization (flatter minima have "
         "lower test error), and the entropic optimizers (Entropy-SGD, Replicated-SGD) find flatter minima "
         "than SGD.")

_ESGD = {"inner_steps": 5, "inner_lr": 0.1, "noise": 1e-4, "alpha": 0.75, "gamma": 0.03, "gscale": False}
_RSGD = {"replicas": 3, "nesterov": True, "gamma": 0.01, "gamma_max": 10.0}

#: (label, optimizer, hyperparameters); every model gets the same gradient-evaluation budget.
MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("sgd lr0.05 b128", "sgd", {"lr": 0.05, "momentum": 0.9, "batch_size": 128, "options": {"nesterov": True}}),
    ("sgd lr0.01 b512", "sgd", {"lr": 0.01, "momentum": 0.0, "batch_size": 512, "options": {}}),
    ("sgd lr0.05 b16", "sgd", {"lr": 0.05, "momentum": 0.0, "batch_size": 16, "options": {}}),
    ("sgd lr0.2 b64", "sgd", {"lr": 0.2, "momentum": 0.0, "batch_size": 64, "options": {}}),
    ("sgd wd5e-3", "sgd", {"lr": 0.05, "momentum": 0.9, "batch_size": 128, "weight_decay": 5e-3,
                           "options": {"nesterov": True}}),
    ("adam lr1e-3", "adam", {"lr": 1e-3, "momentum": 0.0, "batch_size": 128, "options": {}}),
    ("adam lr1e-2 b512", "adam", {"lr": 1e-2, "momentum": 0.0, "batch_size": 512, "options": {}}),
    ("sam rho0.05", "sam", {"lr": 0.05, "momentum": 0.9, "batch_size": 128, "options": {"nesterov": True, "rho": 0.05}}),
    ("sam rho0.2", "sam", {"lr": 0.05, "momentum": 0.9, "batch_size": 128, "options": {"nesterov": True, "rho": 0.2}}),
    ("sam rho0.5 b512", "sam", {"lr": 0.05, "momentum": 0.9, "batch_size": 512,
                                "options": {"nesterov": True, "rho": 0.5}}),
    ("esgd g0.03", "entropy-sgd", {"lr": 1.0, "momentum": 0.0, "batch_size": 128, "gamma_factor": 100.0,
                                   "options": dict(_ESGD)}),
    ("esgd g0.3", "entropy-sgd", {"lr": 1.0, "momentum": 0.0, "batch_size": 128, "gamma_factor": 10.0,
                                  "options": {**_ESGD, "gamma": 0.3}}),
    ("rsgd g0.01", "replicated-sgd", {"lr": 0.05, "momentum": 0.9, "batch_size": 128, "gamma_factor": 300.0,
                                      "options": dict(_RSGD)}),
    ("rsgd g0.1", "replicated-sgd", {"lr": 0.05, "momentum": 0.9, "batch_size": 128, "gamma_factor": 30.0,
                                     "options": {**_RSGD, "gamma": 0.1}}),
]

SCALES: dict[str, dict[str, Any]] = {
    "default": {
        "train_subset": 2000, "measure_examples": 1000, "model": "mlp:32", "grad_evals": 3000, "seed": 0,
        "sigmas": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5], "le_samples": 64,
        "beta": 1000.0, "gammas": [1e5, 3e4, 1e4, 3e3, 1e3], "chains": 4, "sgld_burn_in": 20, "sgld_steps": 40,
        "sgld_lr": 0.1, "trace_matvecs": 60,
    },
    "paper": {
        "train_subset": 0, "measure_examples": 10000, "model": "mlp:512,512", "grad_evals": 30000, "seed": 0,
        "sigmas": [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5], "le_samples": 200,
        "beta": 10000.0, "gammas": [1e6, 3e5, 1e5, 3e4, 1e4, 3e3, 1e3], "chains": 8, "sgld_burn_in": 200,
        "sgld_steps": 400, "sgld_lr": 0.1, "trace_matvecs": 150,
    },
}


def points(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("train_subset", "measure_examples", "model", "grad_evals", "seed", "sigmas", "le_samples", "beta",
            "gammas", "chains", "sgld_burn_in", "sgld_steps", "sgld_lr", "trace_matvecs")
    return [{"label": label, "optimizer": opt, "hyper": hyper, **{k: cfg[k] for k in keys}}
            for label, opt, hyper in MODELS]


def run_point(p: dict[str, Any]) -> dict[str, Any]:
    """Train one model at the common budget, then measure its flatness."""
    import numpy as np
    import torch

    from .. import models
    from ..landscape import Landscape
    from ..measures import hessian, local_energy, local_entropy

    ds = fashion_subset(p["train_subset"])
    torch.manual_seed(p["seed"])
    model = models.build(p["model"], ds.input_shape, ds.n_classes)
    h = p["hyper"]
    res = train_at_budget(model, ds, p["optimizer"], h, p["grad_evals"], h["batch_size"], p["seed"], evals=1)
    out: dict[str, Any] = {k: res.final[k] for k in ("train_loss", "train_error", "test_loss", "test_error")}
    out["n_params"] = sum(q.numel() for q in model.parameters())

    X, y = ds.X_train[: p["measure_examples"]], ds.y_train[: p["measure_examples"]]
    land = Landscape(model, (X, y))
    theta = land.theta
    le = local_energy.local_energy(land, theta, sigmas=p["sigmas"], n_samples=p["le_samples"], measure="error",
                                   seed=1234)
    s = np.concatenate([[0.0], le.sigmas])
    d = np.concatenate([[0.0], le.delta])
    out["local_energy"] = le.to_dict()
    out["local_energy_auc"] = float(np.sum(0.5 * (d[1:] + d[:-1]) * np.diff(s)))
    top = hessian.top_eigenvalues(land, theta, k=1, tol=1e-4, max_matvecs=600, return_vectors=False)
    out["top_eigenvalue"] = float(top.values[0])
    out["top_matvecs"] = top.matvecs
    tr = hessian.trace(land, theta, matvecs=p["trace_matvecs"], method="hutch++")
    out["trace"] = tr.to_dict()
    ent = local_entropy.local_entropy(land, theta, gammas=p["gammas"], beta=p["beta"], n_chains=p["chains"],
                                      steps=p["sgld_steps"], burn_in=p["sgld_burn_in"], lr=p["sgld_lr"],
                                      lambda_max=out["top_eigenvalue"], seed=1234)
    out["local_entropy"] = ent.to_dict()
    out["local_entropy_per_param"] = float(ent.per_param[-1])  # at the smallest gamma
    return out


_MEASURES = [  # (key, label, sign expected for "flatter = lower test error": + means larger = sharper)
    ("local_energy_auc", "local energy (area, train error)", +1),
    ("top_eigenvalue", "top Hessian eigenvalue", +1),
    ("trace", "Hessian trace", +1),
    ("local_entropy_per_param", "local entropy F/N (smallest gamma)", -1),
]


def _value(r: dict[str, Any], key: str) -> float:
    v = r[key]
    return float(v["value"]) if isinstance(v, dict) else float(v)


def summarize(cfg: dict[str, Any], results: list[tuple[dict, dict]], out: Path) -> Summary:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import kendalltau

    colors = {"sgd": "tab:blue", "adam": "tab:orange", "sam": "tab:green", "entropy-sgd": "tab:red",
              "replicated-sgd": "tab:purple"}
    test = np.array([r["test_error"] for _, r in results])
    vals = {k: np.array([_value(r, k) for _, r in results]) for k, _, _ in _MEASURES}

    rows = ["| model | optimizer | train err | test err | local energy area | top eig | trace | local entropy F/N |",
            "|---|---|---|---|---|---|---|---|"]
    for (p, r) in sorted(results, key=lambda pr: pr[1]["test_error"]):
        rows.append(f"| {p['label']} | {p['optimizer']} | {r['train_error']:.4f} | {r['test_error']:.4f} | "
                    f"{r['local_energy_auc']:.4f} | {r['top_eigenvalue']:.3f} | {r['trace']['value']:.1f} "
                    f"± {r['trace']['stderr']:.1f} | {r['local_entropy_per_param']:.4f} |")
    taus: dict[str, Any] = {}
    trows = ["| measure | Kendall tau with test error | p-value | expected sign |", "|---|---|---|---|"]
    for key, label, sign in _MEASURES:
        t, pv = kendalltau(vals[key], test)
        taus[key] = {"tau": float(t), "p": float(pv)}
        trows.append(f"| {label} | {t:+.3f} | {pv:.3f} | {'+' if sign > 0 else '-'} |")
    t_ee, p_ee = kendalltau(vals["local_energy_auc"], vals["local_entropy_per_param"])
    taus["local_energy_vs_local_entropy"] = {"tau": float(t_ee), "p": float(p_ee)}
    trows.append(f"| local energy vs local entropy (agreement: expected -) | {t_ee:+.3f} | {p_ee:.3f} | - |")

    # which optimizers are flattest: mean local energy area per optimizer family
    fam: dict[str, list[float]] = {}
    for (p, r) in results:
        fam.setdefault(p["optimizer"], []).append(r["local_energy_auc"])
    frows = ["| optimizer | models | mean local energy area | mean test error |", "|---|---|---|---|"]
    fam_test: dict[str, list[float]] = {}
    for (p, r) in results:
        fam_test.setdefault(p["optimizer"], []).append(r["test_error"])
    for o in fam:
        frows.append(f"| {o} | {len(fam[o])} | {np.mean(fam[o]):.4f} | {np.mean(fam_test[o]):.4f} |")

    figures = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for (p, r) in results:
        le = r["local_energy"]
        ax.errorbar(le["sigmas"], le["delta"], yerr=le["stderr"], color=colors.get(p["optimizer"], "k"),
                    alpha=0.8, lw=1, capsize=2, label=p["optimizer"])
    h, l = ax.get_legend_handles_labels()
    uniq = dict(zip(l, h))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.set_xlabel("sigma (multiplicative noise)")
    ax.set_ylabel("local energy: delta train error")
    ax.set_title("local energy curves, 14 models")
    fig.tight_layout()
    fig.savefig(out / "local_energy_curves.png", dpi=120)
    plt.close(fig)
    figures.append("local_energy_curves.png")

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (key, label, _) in zip(axes, _MEASURES):
        for (p, r) in results:
            ax.scatter(_value(r, key), r["test_error"], color=colors.get(p["optimizer"], "k"), s=25,
                       label=p["optimizer"])
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("test error")
        ax.set_title(f"tau = {taus[key]['tau']:+.2f}", fontsize=9)
    h, l = axes[0].get_legend_handles_labels()
    uniq = dict(zip(l, h))
    axes[0].legend(uniq.values(), uniq.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "measures_vs_test_error.png", dpi=120)
    plt.close(fig)
    figures.append("measures_vs_test_error.png")

    good = [taus[k]["tau"] * s > 0 for k, _, s in _MEASURES]
    ent_fam = [np.mean(fam[o]) for o in ("entropy-sgd", "replicated-sgd") if o in fam]
    sgd_fam = np.mean(fam["sgd"]) if "sgd" in fam else float("nan")
    flatter = all(e < sgd_fam for e in ent_fam) if ent_fam else False
    verdict = (f"Across {len(results)} models, {sum(good)} of {len(good)} measures correlate with test error in "
               f"the expected direction (local energy tau {taus['local_energy_auc']['tau']:+.2f}, local entropy tau "
               f"{taus['local_entropy_per_param']['tau']:+.2f}); local energy vs local entropy tau {t_ee:+.2f}. "
               f"Entropic optimizers {'do' if flatter else 'do not'} have a smaller mean local energy than SGD. "
               "Default scale: small MLP on a 2 000-example subset, one seed per model.")
    notes = (f"Local entropy is the SGLD + thermodynamic-integration estimate at beta={cfg['beta']:g} on gammas "
             f"{cfg['gammas']} with short chains; at the smallest gammas the chains are not fully equilibrated (the "
             "soft modes mix in ~1/(eta gamma) steps), so it is a finite-time estimate, comparable across models "
             "because every model gets the same ladder, chain count and step rule. The test errors of the "
             f"{len(results)} models span only {test.min():.4f} to {test.max():.4f} (one seed each), so with this "
             "many models a Kendall tau below about 0.4 in magnitude is not significant (see the p-values).")
    return Summary(tables={"models": "\n".join(rows), "kendall_tau": "\n".join(trows),
                           "optimizer_families": "\n".join(frows)},
                   figures=figures, verdict=verdict,
                   measured={"kendall_tau": taus, "n_models": len(results),
                             "mean_local_energy_area": {o: float(np.mean(v)) for o, v in fam.items()}},
                   published={}, notes=notes)


register(Study(name="flatness-vs-generalization", paper=PAPER, claim=CLAIM, scales=SCALES, points=points,
               run_point=run_point, summarize=summarize, description=__doc__ or ""))
