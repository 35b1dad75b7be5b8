"""Solvers for the binary and continuous perceptron, and flatness measures of what they find.

Binary perceptron (K = 1), weights w in {-1, +1}^N, stabilities Delta_mu = y_mu w . x_mu / sqrt(N):

* :func:`anneal` — Metropolis simulated annealing with single-weight flips on a per-pattern energy
  ``energy``: ``"errors"`` (number of misclassified patterns), ``"cross-entropy"``
  (sum_mu log(1 + exp(-lam Delta_mu)), lam fixed: a finite-norm cross-entropy), or ``"local-energy"``
  (sum_mu H((1 - 2d) Delta_mu / (2 sqrt(d (1 - d))))): the expected number of errors after flipping a
  random fraction d of the weights (large-N formula). With d decreased during the run this is the
  *entropy-driven* Monte Carlo: it prefers configurations surrounded by solutions.
* :func:`replicated_sgd` — replicated SGD on binary weights (Baldassi et al. PNAS 2016): y replicas
  with continuous hidden fields H_a, weights sign(H_a), clipped-perceptron minibatch updates and an
  elastic coupling to a centre whose strength grows every epoch.
* :func:`~flatminima.perceptron.fbp.fbp` (in :mod:`.fbp`) — focusing BP.

Continuous perceptron: :func:`sgd_cross_entropy` — minibatch SGD on the cross-entropy
log(1 + exp(-Delta)) with Delta = y w . x / sqrt(N), where the norm rho = |w| / sqrt(N) (the inverse
temperature of the loss) is either left free or held on a schedule, e.g. slowly reduced.

Measures: :func:`local_energy_binary` (training error after flipping a random fraction d of the
weights, Monte Carlo, vectorised over samples) and :func:`local_energy_continuous` (training error
after a relative Gaussian perturbation of size sigma, exact expectation).

The Monte Carlo loop is inherently sequential (one proposal depends on the previous one); each
proposal is vectorised over patterns (numpy, CPU).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from scipy.special import erfc
from tqdm.auto import tqdm

from ..errors import ConfigError
from .fbp import SolverResult, fbp
from .models import _as_tensor, patterns

ENERGIES = ("errors", "cross-entropy", "local-energy")


def _perceptron_xi(X, y, device=None) -> torch.Tensor:
    """Label-absorbed patterns y_mu x_mu of a perceptron (K = 1): (P, N)."""
    return patterns(X, y, K=1, device=device).xi[:, 0, :]


def _pattern_energy(name: str, delta: np.ndarray, lam: float, d: float) -> np.ndarray:
    if name == "errors":
        return (delta <= 0).astype(float)
    if name == "cross-entropy":
        return np.logaddexp(0.0, -lam * delta)
    # local energy: probability that a pattern is misclassified after flipping a fraction d
    z = (1.0 - 2.0 * d) * delta / (2.0 * math.sqrt(d * (1.0 - d)))
    return 0.5 * erfc(z / math.sqrt(2.0))


def anneal(
    X,
    y,
    energy: str = "errors",
    sweeps: int = 300,
    beta: tuple[float, float] = (0.5, 20.0),
    lam: float = 2.0,
    d: tuple[float, float] = (0.2, 0.01),
    seed: int = 0,
    progress: bool = False,
) -> SolverResult:
    """Simulated annealing (Metropolis, single flips) on a binary perceptron.

    X: (P, N), y: (P,). energy: one of "errors", "cross-entropy" (``lam``), "local-energy" (flip
    fraction annealed geometrically from d[0] to d[1]). beta: inverse temperature annealed
    geometrically from beta[0] to beta[1] over ``sweeps`` sweeps (one sweep = N proposals in random
    order), from random +-1 weights; stops at the end of the first sweep with zero training errors
    (else returns the configuration with the fewest errors seen at the end of a sweep). Returns :class:`SolverResult` (steps = sweeps done; history: per-sweep energy and errors).
    """
    if energy not in ENERGIES:
        raise ConfigError(f"energy must be one of {ENERGIES}, got {energy!r}")
    if sweeps < 1:
        raise ConfigError("sweeps must be >= 1")
    if min(beta) <= 0:
        raise ConfigError("inverse temperatures must be positive")
    if energy == "local-energy" and not (0 < d[1] <= d[0] < 0.5):
        raise ConfigError("local-energy needs 0 < d_end <= d_start < 0.5")
    xi = _perceptron_xi(X, y).cpu().numpy()
    P, N = xi.shape
    rng = np.random.default_rng(seed)
    w = rng.choice([-1.0, 1.0], N)
    scale = 2.0 / math.sqrt(N)
    xiT = np.ascontiguousarray(xi.T) * scale  # change of Delta when flipping w_i is -w_i * xiT[i]
    delta = xi @ w / math.sqrt(N)
    betas = np.geomspace(beta[0], beta[1], sweeps)
    ds = np.geomspace(d[0], d[1], sweeps) if energy == "local-energy" else np.zeros(sweeps)
    t0 = time.perf_counter()
    history = []
    best_w, best_err = w.copy(), int((delta <= 0).sum())
    done = 0
    bar = tqdm(total=sweeps, desc=f"annealing ({energy})", unit="sweep", disable=not progress, leave=False)
    for s in range(sweeps):
        bar.update(1)
        b, dd = float(betas[s]), float(ds[s])
        e = _pattern_energy(energy, delta, lam, dd)
        order = rng.permutation(N)
        logu = np.log(rng.random(N))
        for j in range(N):
            i = order[j]
            new = delta - w[i] * xiT[i]
            e_new = _pattern_energy(energy, new, lam, dd)
            dE = float(e_new.sum() - e.sum())
            if dE <= 0 or logu[j] < -b * dE:
                w[i] = -w[i]
                delta = new
                e = e_new
        done = s + 1
        err = int((delta <= 0).sum())
        history.append({"sweep": done, "beta": b, "energy": float(e.sum()), "errors": err})
        if err <= best_err:
            best_w, best_err = w.copy(), err
        if err == 0:
            break
    bar.close()
    err = int((xi @ best_w <= 0).sum())
    return SolverResult(torch.as_tensor(best_w), err, err == 0, done, time.perf_counter() - t0, history)


def replicated_sgd(
    X,
    y,
    replicas: int = 7,
    batch: int = 80,
    lr: float = 1.0,
    coupling: float = 0.01,
    coupling_factor: float = 1.02,
    margin: float = 0.5,
    epochs: int = 500,
    seed: int = 0,
    device=None,
    progress: bool = False,
) -> SolverResult:
    """Replicated SGD on a binary perceptron (Baldassi et al. PNAS 2016, binary committee version
    reduced to K = 1).

    Each replica a has continuous fields H_a (N,) and weights J_a = sign(H_a); a centre has fields
    H_c and weights J_c. For each minibatch (independent per replica) every pattern with stability
    J_a . xi / sqrt(N) <= ``margin`` adds lr * xi / sqrt(N) to H_a (clipped perceptron rule); then
    H_a += coupling (J_c - J_a) and H_c += coupling * sum_a (J_a - J_c). The coupling is multiplied by
    ``coupling_factor`` after every epoch (scoping). Stops when the centre or a replica has zero
    training errors (the returned w is that configuration). Vectorised over replicas (torch).
    """
    if replicas < 1 or batch < 1 or epochs < 1:
        raise ConfigError("replicas, batch and epochs must be >= 1")
    xi = _perceptron_xi(X, y, device)
    P, N = xi.shape
    g = torch.Generator().manual_seed(int(seed))
    dt, dev = xi.dtype, xi.device
    H0 = torch.randn(N, generator=g, dtype=dt).to(dev) * 0.1
    H = H0.expand(replicas, N).clone()  # equal initial replicas
    Hc = H0.clone()
    sign = lambda a: torch.where(a >= 0, 1.0, -1.0).to(dt)  # noqa: E731
    sq = math.sqrt(N)
    lam = coupling
    t0 = time.perf_counter()
    history = []
    steps_per_epoch = max(1, P // batch)
    bar = tqdm(total=epochs, desc="replicated SGD", unit="epoch", disable=not progress, leave=False)
    for ep in range(epochs):
        bar.update(1)
        perms = torch.stack([torch.randperm(P, generator=g) for _ in range(replicas)]).to(dev)
        for s in range(steps_per_epoch):
            idx = perms[:, s * batch : (s + 1) * batch]  # (y, B)
            xb = xi[idx]  # (y, B, N)
            J = sign(H)
            stab = torch.einsum("ybn,yn->yb", xb, J) / sq
            wrong = (stab <= margin).to(dt)
            H += lr * torch.einsum("yb,ybn->yn", wrong, xb) / sq
            J = sign(H)
            Jc = sign(Hc)
            H += lam * (Jc - J)
            Hc += lam * (J - Jc).sum(0)
        lam *= coupling_factor
        J = sign(H)
        Jc = sign(Hc)
        err_c = int(((xi @ Jc) <= 0).sum())
        err_r = ((J @ xi.T) <= 0).sum(-1)
        history.append({"epoch": ep + 1, "err_center": err_c, "err_best_replica": int(err_r.min()), "coupling": lam})
        if err_c == 0:
            bar.close()
            return SolverResult(Jc.cpu(), 0, True, ep + 1, time.perf_counter() - t0, history)
        if int(err_r.min()) == 0:
            bar.close()
            a = int(torch.argmin(err_r))
            return SolverResult(J[a].cpu(), 0, True, ep + 1, time.perf_counter() - t0, history)
    bar.close()
    return SolverResult(Jc.cpu(), err_c, False, epochs, time.perf_counter() - t0, history)


def sgd_cross_entropy(
    X,
    y,
    epochs: int = 200,
    lr: float = 0.5,
    batch: int = 20,
    norm: tuple[float, float] | None = None,
    seed: int = 0,
    device=None,
) -> SolverResult:
    """Minibatch SGD on the cross-entropy of a continuous perceptron.

    Loss per pattern log(1 + exp(-Delta)), Delta = w . xi / sqrt(N). The norm rho = |w| / sqrt(N)
    scales all stabilities, so it is the inverse temperature (sharpness) of the loss. ``norm=None``:
    free norm (plain SGD; rho grows as the data are fitted). ``norm=(rho0, rho1)``: after every step
    w is rescaled to rho(t) sqrt(N), rho annealed geometrically from rho0 to rho1 over the epochs
    (rho1 < rho0: the slow norm reduction). Returns the final w (continuous) in a SolverResult
    (steps = epochs; history per epoch: loss, errors, rho, min stability of w / |w|).
    """
    if epochs < 1 or batch < 1 or lr <= 0:
        raise ConfigError("epochs and batch must be >= 1 and lr > 0")
    if norm is not None and (len(norm) != 2 or min(norm) <= 0):
        raise ConfigError("norm must be None or a pair (rho0, rho1) of positive numbers")
    xi = _perceptron_xi(X, y, device)
    P, N = xi.shape
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(N, generator=g, dtype=xi.dtype).to(xi.device)
    sq = math.sqrt(N)
    rhos = np.geomspace(norm[0], norm[1], epochs) if norm is not None else None
    if rhos is not None:
        w *= rhos[0] * sq / w.norm()
    else:
        w *= 0.1
    t0 = time.perf_counter()
    history = []
    for ep in range(epochs):
        perm = torch.randperm(P, generator=g).to(xi.device)
        for s in range(0, P, batch):
            xb = xi[perm[s : s + batch]]
            delta = xb @ w / sq
            # d/dw log(1 + e^{-Delta}) = -sigmoid(-Delta) xi / sqrt(N)
            grad = -(torch.sigmoid(-delta)[:, None] * xb).sum(0) / sq / xb.shape[0]
            w -= lr * grad * sq  # step in units where Delta changes by O(lr)
            if rhos is not None:
                w *= rhos[ep] * sq / w.norm()
        delta = xi @ w / sq
        rho = float(w.norm() / sq)
        history.append({"epoch": ep + 1, "loss": float(torch.nn.functional.softplus(-delta).mean()),
                        "errors": int((delta <= 0).sum()), "rho": rho, "kappa_min": float(delta.min() / rho)})
    err = int(((xi @ w) <= 0).sum())
    return SolverResult(w.cpu(), err, err == 0, epochs, time.perf_counter() - t0, history)


def local_energy_binary(X, y, w, flip_fractions, samples: int = 64, seed: int = 0, device=None) -> np.ndarray:
    """Mean training error (fraction of patterns) after flipping a random set of round(d N) weights of
    the binary perceptron w, for each d in ``flip_fractions``; Monte Carlo over ``samples`` random sets,
    all evaluated in one batched product. Returns an array like ``flip_fractions``."""
    xi = _perceptron_xi(X, y, device)
    P, N = xi.shape
    wt = _as_tensor(w, xi.dtype, xi.device).reshape(-1)
    if wt.numel() != N:
        raise ConfigError(f"w must have {N} entries")
    if samples < 1:
        raise ConfigError("samples must be >= 1")
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for d in np.atleast_1d(np.asarray(flip_fractions, float)):
        if not 0 <= d <= 1:
            raise ConfigError("flip fractions must be in [0, 1]")
        k = int(round(d * N))
        scores = torch.rand(samples, N, generator=g)
        flip = torch.zeros(samples, N, dtype=torch.bool)
        if k:
            flip.scatter_(1, torch.topk(scores, k, dim=1).indices, True)
        W = torch.where(flip.to(xi.device), -wt, wt)
        out.append(float(((W @ xi.T) <= 0).double().mean()) if P else 0.0)
    return np.array(out)


def local_energy_continuous(X, y, w, sigmas) -> np.ndarray:
    """Expected training error after w -> w + sigma (|w| / sqrt(N)) z, z ~ N(0, I), for each sigma.

    Exact: pattern mu is misclassified with probability H(a_mu / b_mu), a = xi . w,
    b = sigma |w| |xi| / sqrt(N). Returns an array like ``sigmas`` (fraction of patterns)."""
    xi = _perceptron_xi(X, y).cpu().numpy()
    wv = np.asarray(_as_tensor(w).cpu(), float).reshape(-1)
    if wv.shape[0] != xi.shape[1]:
        raise ConfigError(f"w must have {xi.shape[1]} entries")
    a = xi @ wv
    nx = np.linalg.norm(xi, axis=1)
    out = []
    for s in np.atleast_1d(np.asarray(sigmas, float)):
        if s < 0:
            raise ConfigError("sigmas must be >= 0")
        if s == 0:
            out.append(float((a <= 0).mean()))
            continue
        b = s * np.linalg.norm(wv) * nx / math.sqrt(len(wv))
        out.append(float((0.5 * erfc(a / b / math.sqrt(2.0))).mean()))
    return np.array(out)


SOLVERS = ("fbp", "rsgd", "sa", "ce-mc", "le-mc")


def solve(X, y, solver: str = "fbp", K: int = 1, tree: bool = True, seed: int = 0, progress: bool = False,
          **options) -> SolverResult:
    """Run one binary solver by name on (X (P, N), y (P,)).

    solver: "fbp" (:func:`~flatminima.perceptron.fbp.fbp`, any odd K), and for the perceptron (K = 1):
    "rsgd" (:func:`replicated_sgd`), "sa" (:func:`anneal` on the error count), "ce-mc" (:func:`anneal`
    on the cross-entropy), "le-mc" (:func:`anneal` on the local energy: entropy-driven Monte Carlo).
    ``options`` go to the solver."""
    if solver not in SOLVERS:
        raise ConfigError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "fbp":
        return fbp(X, y, K=K, tree=tree, progress=progress, **options)  # deterministic: seed unused
    if K != 1:
        raise ConfigError(f"solver {solver!r} is implemented for the perceptron (K = 1) only; use 'fbp'")
    if solver == "rsgd":
        return replicated_sgd(X, y, seed=seed, progress=progress, **options)
    energy = {"sa": "errors", "ce-mc": "cross-entropy", "le-mc": "local-energy"}[solver]
    defaults = {"sa": {"beta": (0.5, 10.0), "sweeps": 300}, "ce-mc": {"sweeps": 150}, "le-mc": {"sweeps": 150}}[solver]
    return anneal(X, y, energy=energy, seed=seed, progress=progress, **{**defaults, **options})
