"""Belief propagation for the binary perceptron and binary committee machines.

The measure on +-1 weights w (shape (K, n)) is

    p(w) ∝ prod_mu X_mu(w) * exp(sum_i h_i w_i),      X_mu = 1 iff pattern mu is classified,

with an external field h (K, n) (zero for the plain solution space; gamma * w~ for the Franz-Parisi
local entropy around a reference w~; the focusing field in focusing BP).

Messages (field representation): u[mu, k, i] is the cavity field sent by pattern mu to weight (k, i).
The total field is H = h + sum_mu u and the cavity magnetisation is m_{i->mu} = tanh(H_i - u_{mu,i}).
Each factor treats the cavity sum of the other weights of a hidden unit as Gaussian (central limit,
O(n) per factor, exact as n -> infinity) and the K hidden outputs as independent; the output
constraint sum_k tau_k > 0 is summed exactly (Poisson-binomial, in the log domain). With
H(x) = erfc(x / sqrt 2) / 2 and cavity mean/variance (M, V) of a unit:

    P(tau_k = +1 | w_{k,i} = s) = H(-(M_{-i} + xi_i s) / sqrt(V_{-i}))
    u = (1/2) [log P(sat | +1) - log P(sat | -1)].

All probabilities are handled as logs (:func:`log_H` is stable for any argument); |u| is capped at
U_MAX = 50 (a hard constraint in double precision) so that frozen weights keep finite messages, and
exponentials are capped so that no subnormal number appears (subnormal arithmetic is slow on most CPUs).
Updates are parallel over all patterns and weights (vectorised), with damping
u <- damping*u + (1-damping)*u_new; convergence is max |u_new - u| < tol.

The Bethe free entropy at a fixed point is

    log Z = sum_mu log Z_mu + sum_i log 2cosh(H_i) - sum_{mu,i} [log 2cosh(H_i) - log 2cosh(H_i - u_{mu,i})],

with Z_mu the probability that pattern mu is classified under the Gaussian approximation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, ConvergenceError
from .exact import enumerate_solutions
from .models import Patterns, as_weights, patterns

_SQRT2 = math.sqrt(2.0)
_LOG_HALF = math.log(0.5)
V_MIN = 1e-12  # floor of a cavity variance (all other weights of the unit frozen)
_LOG_H_SWITCH = 30.0
CHUNK_ELEMS = 1 << 15  # CPU block size of a sweep (message entries)
U_MAX = 50.0  # cap of |u|: tanh(50) = 1 in double, so a capped message is a hard constraint


# ------------------------------------------------------------------------------------------- special
def log_H(x: torch.Tensor) -> torch.Tensor:
    """log H(x), H(x) = erfc(x / sqrt 2) / 2 = P(Z > x) for a standard Gaussian Z; stable for all x.

    log(erfc(x / sqrt 2) / 2) is accurate to machine precision (relative) for x <= 30; beyond, where
    erfc underflows near x = 38, the (rare) entries use log(erfcx(x / sqrt 2) / 2) - x^2 / 2.
    For x << 0 the result is log(1 - tiny) with absolute error ~1e-16 (all BP needs).
    """
    out = torch.log(0.5 * torch.special.erfc(x.clamp_max(_LOG_H_SWITCH) / _SQRT2))  # no subnormals
    big = x > _LOG_H_SWITCH
    if bool(big.any()):
        xb = x[big]
        out[big] = _LOG_HALF + torch.log(torch.special.erfcx(xb / _SQRT2)) - 0.5 * xb * xb
    return out


def _tanh_sech2(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tanh c, 1 - tanh^2 c) from one exponential, without cancellation in 1 - tanh^2.

    |c| is capped at 300 inside the exponential (e^-600 is still a normal double, so no subnormal number
    reaches later operations), and tanh(300) = 1 exactly anyway."""
    e = torch.exp(-2.0 * c.abs().clamp_max(300.0))
    r = 1.0 / (1.0 + e)
    t = torch.copysign((1.0 - e) * r, c)
    return t, 4.0 * e * r * r


def log2cosh(x: torch.Tensor) -> torch.Tensor:
    """log(2 cosh x) without overflow."""
    a = x.abs()
    return a + torch.log1p(torch.exp(-2.0 * a.clamp_max(300.0)))


# ------------------------------------------------------------------------------------------- factors
def _log_tails_excluding(lp: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each unit k, log P(sum_{l != k} tau_l >= 0) and log P(sum_{l != k} tau_l >= 2).

    lp, lq: (P, K) log-probabilities of tau_l = +1 / -1. Returns two (P, K) tensors. Exact
    Poisson-binomial recursion in the log domain (K steps of a vectorised update)."""
    P, K = lp.shape
    L = torch.full((P, K, K), -math.inf, dtype=lp.dtype, device=lp.device)  # [mu, excluded k, count c]
    L[..., 0] = 0.0
    eye = torch.eye(K, dtype=torch.bool, device=lp.device)
    ninf = torch.full((P, K, 1), -math.inf, dtype=lp.dtype, device=lp.device)
    for l in range(K):
        shifted = torch.cat([ninf, L[..., :-1]], dim=-1) + lp[:, l, None, None]
        new = torch.logaddexp(L + lq[:, l, None, None], shifted)
        L = torch.where(eye[:, l][None, :, None], L, new)
    ca = (K - 1) // 2  # count c of +1 among the K-1 others: sum = 2c - (K-1) >= 0  <=>  c >= ca
    return torch.logsumexp(L[..., ca:], dim=-1), torch.logsumexp(L[..., ca + 1 :], dim=-1)


def _log_sat_all(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """log P(sum_k tau_k > 0) for independent units: lp, lq (P, K) -> (P,). With K odd the others' sum is
    even, so the output is +1 when unit 0 is +1 and the others sum to >= 0, or unit 0 is -1 and they sum
    to >= 2."""
    logA, logB = _log_tails_excluding(lp, lq)
    return torch.logaddexp(lp[:, 0] + logA[:, 0], lq[:, 0] + logB[:, 0])


def _factor_messages(xi: torch.Tensor, xi2: torch.Tensor, mc: torch.Tensor, vc: torch.Tensor, K: int) -> torch.Tensor:
    """New factor-to-variable fields from cavity magnetisations mc and variances vc = 1 - mc^2.

    xi, xi2, mc, vc: (P, K, n) (or (K, n) for a single pattern with a leading axis of 1)."""
    xm = xi * mc
    xv = xi2 * vc
    M = xm.sum(-1)
    V = xv.sum(-1)
    Mi = M[..., None] - xm
    s = torch.rsqrt((V[..., None] - xv).clamp_min_(V_MIN))
    zp = (Mi + xi).mul_(s)
    zm = (Mi - xi).mul_(s)
    if K == 1:
        return (log_H(zp.neg_()) - log_H(zm.neg_())).mul_(0.5).clamp_(-U_MAX, U_MAX)
    sv = torch.sqrt(V.clamp_min(V_MIN))
    logA, logB = _log_tails_excluding(log_H(-M / sv), log_H(M / sv))
    a = logA[..., None]
    b = logB[..., None]
    lplus = torch.logaddexp(log_H(-zp) + a, log_H(zp) + b)
    lminus = torch.logaddexp(log_H(-zm) + a, log_H(zm) + b)
    return (0.5 * (lplus - lminus)).clamp_(-U_MAX, U_MAX)


def _chunk_rows(pat: Patterns, chunk_elems: int | None) -> int:
    if chunk_elems is None:
        chunk_elems = CHUNK_ELEMS if pat.xi.device.type == "cpu" else 1 << 62
    return max(1, min(pat.P, chunk_elems // max(1, pat.K * pat.n)))


def sweep(pat: Patterns, u: torch.Tensor, h_ext: torch.Tensor, chunk_elems: int | None = None) -> torch.Tensor:
    """One parallel BP sweep: all new factor-to-variable fields (P, K, n) from the current ones.

    Vectorised over patterns; on CPU the patterns are processed in blocks of about ``chunk_elems``
    message entries (default 32768) so that temporaries stay in cache; on CUDA one block."""
    H = u.sum(0) + h_ext
    rows = _chunk_rows(pat, chunk_elems)
    if rows >= pat.P:
        mc, vc = _tanh_sech2(H - u)
        return _factor_messages(pat.xi, pat.xi2, mc, vc, pat.K)
    out = torch.empty_like(u)
    xi2 = pat.xi2
    for s in range(0, pat.P, rows):
        mc, vc = _tanh_sech2(H - u[s : s + rows])
        out[s : s + rows] = _factor_messages(pat.xi[s : s + rows], xi2[s : s + rows], mc, vc, pat.K)
    return out


def sweep_loop(pat: Patterns, u: torch.Tensor, h_ext: torch.Tensor) -> torch.Tensor:
    """The same sweep as :func:`sweep`, computed one pattern at a time (a Python loop over patterns).

    Reference implementation for tests and the baseline of ``benchmarks/perceptron.py``."""
    H = u.sum(0) + h_ext
    out = torch.empty_like(u)
    for mu in range(pat.P):
        mc, vc = _tanh_sech2(H - u[mu])
        x = pat.xi[mu : mu + 1]
        out[mu] = _factor_messages(x, x * x, mc[None], vc[None], pat.K)[0]
    return out


def bethe_log_z(pat: Patterns, u: torch.Tensor, h_ext: torch.Tensor) -> float:
    """Bethe estimate of log Z = log sum_w prod_mu X_mu(w) exp(h . w) at messages u (total, not per weight)."""
    H = u.sum(0) + h_ext
    lcH = log2cosh(H)
    total = float(lcH.sum())
    if pat.P == 0:
        return total
    c = H - u
    mc, vc = _tanh_sech2(c)
    M = (pat.xi * mc).sum(-1)
    V = (pat.xi2 * vc).sum(-1).clamp_min(V_MIN)
    z = M / torch.sqrt(V)
    log_zmu = _log_sat_all(log_H(-z), log_H(z))
    edge = (lcH[None] - log2cosh(c)).sum()
    return float(log_zmu.sum() + total - edge)


# ------------------------------------------------------------------------------------------- driver
@dataclass
class BPResult:
    """Outcome of :func:`run_bp`.

    u: (P, K, n) factor-to-variable fields; fields: (K, n) total fields H; magnetizations: tanh(H);
    log_z: Bethe log partition function (total); converged: last message change < tol;
    iterations: sweeps done; delta: last max |u_new - u_old|; seconds: wall time of the run.
    """

    u: torch.Tensor
    fields: torch.Tensor
    log_z: float
    converged: bool
    iterations: int
    delta: float
    seconds: float

    @property
    def magnetizations(self) -> torch.Tensor:
        return torch.tanh(self.fields)


def _check_bp_args(damping: float, tol: float, max_iters: int) -> None:
    if not 0.0 <= damping < 1.0:
        raise ConfigError(f"damping must be in [0, 1), got {damping}")
    if tol <= 0:
        raise ConfigError(f"tol must be positive, got {tol}")
    if max_iters < 1:
        raise ConfigError(f"max_iters must be >= 1, got {max_iters}")


def run_bp(
    pat: Patterns,
    h_ext: torch.Tensor | None = None,
    u0: torch.Tensor | None = None,
    damping: float = 0.5,
    tol: float = 1e-7,
    max_iters: int = 2000,
    seed: int | None = None,
) -> BPResult:
    """Iterate parallel damped BP sweeps to a fixed point.

    pat: :class:`Patterns`; h_ext: (K, n) external field (default 0); u0: (P, K, n) initial messages
    (default 0, or small Gaussian noise when ``seed`` is given, e.g. to break the permutation
    symmetry of fully connected committees). Convergence: max |u_new - u| < tol.
    """
    _check_bp_args(damping, tol, max_iters)
    xi = pat.xi
    if h_ext is None:
        h_ext = torch.zeros(pat.K, pat.n, dtype=xi.dtype, device=xi.device)
    h_ext = h_ext.to(dtype=xi.dtype, device=xi.device).reshape(pat.K, pat.n)
    if u0 is not None:
        u = u0.to(dtype=xi.dtype, device=xi.device).clone()
    elif seed is not None:
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        u = (1e-3 * torch.randn(xi.shape, generator=g, dtype=xi.dtype)).to(xi.device)
    else:
        u = torch.zeros_like(xi)
    t0 = time.perf_counter()
    converged = pat.P == 0
    it = 0
    delta = 0.0
    while not converged and it < max_iters:
        new = sweep(pat, u, h_ext)
        new = torch.nan_to_num(new, nan=0.0)
        delta = float((new - u).abs().max())
        u = damping * u + (1.0 - damping) * new if damping > 0 else new
        it += 1
        converged = delta < tol
    H = u.sum(0) + h_ext
    return BPResult(u, H, bethe_log_z(pat, u, h_ext), converged, it, delta, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- public
def entropy(
    X,
    y,
    method: str = "bp",
    K: int = 1,
    tree: bool = True,
    damping: float = 0.5,
    tol: float = 1e-7,
    max_iters: int = 2000,
    device=None,
) -> float:
    """Log of the number of +-1 weight vectors that classify every pattern (total, not per weight).

    X: (P, N) inputs, y: (P,) labels in {-1, +1} (numpy arrays or tensors). K, tree: machine (K = 1 is
    the perceptron y (w . x) > 0). method="bp": Bethe free entropy of the BP fixed point (exact as
    N -> infinity in the replica-symmetric phase); method="exact": enumeration of all 2^(K n) vectors
    (K n <= 30). Returns -inf when no vector classifies all patterns (exact method). A BP run that
    does not converge raises :class:`~flatminima.errors.ConvergenceError`.
    """
    pat = patterns(X, y, K=K, tree=tree, device=device)
    if method == "exact":
        return enumerate_solutions(pat).log_count
    if method != "bp":
        raise ConfigError(f"method must be 'bp' or 'exact', got {method!r}")
    # fully connected committees: tiny random initial messages break the permutation symmetry of the units
    res = run_bp(pat, damping=damping, tol=tol, max_iters=max_iters, seed=None if pat.tree else 0)
    if not res.converged:
        raise ConvergenceError(
            f"BP did not converge in {res.iterations} sweeps (last change {res.delta:.2e} > tol {tol:.1e}); "
            "raise damping or max_iters"
        )
    return res.log_z


def legendre(gammas, phis, qs) -> tuple[np.ndarray, np.ndarray]:
    """Legendre transform of a local free entropy phi(gamma) = (1/N) log sum_w X(w) e^{gamma w.w~}.

    With q(gamma) = dphi/dgamma the mean overlap with the reference, the local entropy at normalised
    Hamming distance d = (1 - q) / 2 is S(d) = phi - gamma q. Returns ``(d, S)`` arrays.
    """
    g, p, q = (np.asarray(a, dtype=float) for a in (gammas, phis, qs))
    if not (g.shape == p.shape == q.shape):
        raise ConfigError("gammas, phis and qs must have the same shape")
    return (1.0 - q) / 2.0, p - g * q


@dataclass
class LocalEntropyCurve:
    """Local entropy S(d) of a reference w~: (1/N) log #{solutions at normalised distance d from w~}.

    distances: the requested d; entropy: S at those d (per weight; NaN where d is outside the range
    the scan reached). scan_*: the gamma scan behind it (gamma, phi = (1/N) log Z(gamma), overlap q,
    d = (1 - q)/2, S = phi - gamma q, converged flags, sweeps). n_weights: N. method: "bp" or "exact".
    For method="exact", ``entropy`` holds the microcanonical count at the nearest integer distance
    and the scan holds the exact canonical (Legendre) curve on the same gammas as BP would use.
    """

    distances: np.ndarray
    entropy: np.ndarray
    scan_gamma: np.ndarray
    scan_phi: np.ndarray
    scan_q: np.ndarray
    scan_d: np.ndarray
    scan_S: np.ndarray
    scan_converged: np.ndarray
    scan_iterations: np.ndarray
    n_weights: int
    method: str
    seconds: float = 0.0

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.scan_converged))

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}


def default_gammas(distances, n_gamma: int = 24) -> np.ndarray:
    """A decreasing gamma grid whose free-spin distances (1 - tanh gamma)/2 span the requested d.

    Free distances from min(d)/2 to 1/2: half of the points geometric (dense where S(d) has its
    log-singularity at small d), half uniform; gamma = atanh(1 - 2 d_free), from large to 0."""
    d = np.asarray(distances, dtype=float)
    if n_gamma < 4:
        raise ConfigError("n_gamma must be >= 4")
    dmin = max(float(d.min()), 1e-6)
    n_geo = n_gamma // 2
    dfree = np.unique(np.concatenate([np.geomspace(dmin / 2.0, 0.5, n_geo), np.linspace(dmin / 2.0, 0.5, n_gamma - n_geo + 1)]))
    return np.arctanh(np.clip(1.0 - 2.0 * dfree, 0.0, 1.0 - 1e-16))


def _interp_curve(d_scan, S_scan, g_scan, targets) -> np.ndarray:
    """S at target distances from scanned points (d, S, gamma).

    On a segment where the cubic Hermite interpolant with the exact slopes dS/dd = 2 gamma is concave
    (2 m0 + m1 >= 3 c >= m0 + 2 m1, c the chord slope) that cubic is used; elsewhere (a jump of the
    scan across a first-order transition) the straight chord, i.e. the concave hull. Targets outside
    the scanned range give NaN."""
    targets = np.asarray(targets, dtype=float)
    out = np.full(len(targets), np.nan)
    if len(d_scan) < 2:
        return out
    order = np.lexsort((-np.asarray(S_scan), np.asarray(d_scan)))
    d, S, g = np.asarray(d_scan)[order], np.asarray(S_scan)[order], np.asarray(g_scan)[order]
    keep = np.concatenate([[True], np.diff(d) > 1e-10])  # equal d: keep the largest S
    d, S, m = d[keep], S[keep], 2.0 * g[keep]
    if len(d) < 2:
        return out
    inside = (targets >= d[0]) & (targets <= d[-1])
    t = targets[inside]
    j = np.clip(np.searchsorted(d, t, side="right") - 1, 0, len(d) - 2)
    h = d[j + 1] - d[j]
    c = (S[j + 1] - S[j]) / h
    m0, m1 = m[j], m[j + 1]
    x = (t - d[j]) / h
    linear = S[j] + c * (t - d[j])
    h00, h10, h01, h11 = 2 * x**3 - 3 * x**2 + 1, x**3 - 2 * x**2 + x, -2 * x**3 + 3 * x**2, x**3 - x**2
    cubic = h00 * S[j] + h10 * h * m0 + h01 * S[j + 1] + h11 * h * m1
    tol = 1e-9 * (1 + np.abs(c))
    concave = (2 * m0 + m1 >= 3 * c - tol) & (m0 + 2 * m1 <= 3 * c + tol)
    out[inside] = np.where(concave, cubic, linear)
    return out


def local_entropy(
    X,
    y,
    w,
    distances,
    method: str = "bp",
    K: int = 1,
    tree: bool = True,
    n_gamma: int = 24,
    damping: float = 0.5,
    tol: float = 1e-7,
    max_iters: int = 2000,
    device=None,
    progress: bool = False,
) -> LocalEntropyCurve:
    """Franz-Parisi local entropy S(d) of the solutions around a reference ``w`` (per weight).

    X: (P, N), y: (P,), w: reference weights ((K*n,) or (K, n), +-1), distances: normalised Hamming
    distances d in (0, 1/2]. method="bp": BP with the external field gamma * w on every weight, scanned
    over the decreasing gamma grid of :func:`default_gammas` (``n_gamma`` points) with warm starts; each
    point gives phi(gamma) = log Z(gamma) / N and q = mean_i w_i tanh(H_i), then
    S = phi - gamma q at d = (1 - q)/2 (:func:`legendre`), interpolated at ``distances``.
    method="exact": enumeration (K n <= 30).
    """
    pat = patterns(X, y, K=K, tree=tree, device=device)
    wt = as_weights(w, pat)
    if not bool(((wt == 1) | (wt == -1)).all()):
        raise ConfigError("the reference w must have +-1 entries")
    dist = np.atleast_1d(np.asarray(distances, dtype=float))
    if dist.size == 0 or np.any(dist <= 0) or np.any(dist > 0.5):
        raise ConfigError("distances must be in (0, 0.5]")
    g_grid = default_gammas(dist, n_gamma)
    N = pat.n_weights
    t0 = time.perf_counter()
    if method == "exact":
        sol = enumerate_solutions(pat, reference=wt)
        phi, q = sol.canonical(g_grid)
        dS, SS = legendre(g_grid, phi, q)
        k = np.clip(np.rint(dist * N).astype(int), 0, N)
        with np.errstate(divide="ignore"):
            S_micro = np.log(sol.by_distance[k].astype(float)) / N
        return LocalEntropyCurve(
            dist, S_micro, g_grid, phi, q, dS, SS, np.ones(len(g_grid), bool), np.zeros(len(g_grid), int),
            N, "exact", time.perf_counter() - t0,
        )
    if method != "bp":
        raise ConfigError(f"method must be 'bp' or 'exact', got {method!r}")
    _check_bp_args(damping, tol, max_iters)
    n_g = len(g_grid)
    phis, qs = np.full(n_g, np.nan), np.full(n_g, np.nan)
    conv, iters = np.zeros(n_g, bool), np.zeros(n_g, int)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_g, desc="local entropy (gamma scan)", leave=False)
    # "hot" branch: from large gamma (messages start at the reference) down to gamma = 0, warm starts
    u = None
    for k, g in enumerate(g_grid):
        res = run_bp(pat, h_ext=float(g) * wt, u0=u, damping=damping, tol=tol, max_iters=max_iters)
        u = res.u
        phis[k], qs[k] = res.log_z / N, float((wt * res.magnetizations).sum()) / N
        conv[k], iters[k] = res.converged, res.iterations
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    # "cold" branch: from gamma = 0 (messages start at zero) upwards, until it meets the hot branch.
    # Around an isolated solution the hot branch stays frozen on the reference (q = 1) down to small
    # gamma while the cold one describes the other solutions: at each gamma the fixed point with the
    # larger free entropy is the right one (a first-order jump in d, bridged by the concave hull).
    u = None
    for k in range(n_g - 1, -1, -1):
        g = float(g_grid[k])
        res = run_bp(pat, h_ext=g * wt, u0=u, damping=damping, tol=tol, max_iters=max_iters)
        u = res.u
        phi_c, q_c = res.log_z / N, float((wt * res.magnetizations).sum()) / N
        iters[k] += res.iterations
        if conv[k] and res.converged and abs(q_c - qs[k]) < 1e-4 and abs(phi_c - phis[k]) < 1e-6:
            break  # the two branches coincide from here on
        if res.converged and (not conv[k] or phi_c > phis[k]):
            phis[k], qs[k], conv[k] = phi_c, q_c, True
    dS, SS = legendre(g_grid, phis, qs)
    ok = conv & np.isfinite(SS)
    S_t = _interp_curve(dS[ok], SS[ok], g_grid[ok], dist)
    return LocalEntropyCurve(dist, S_t, g_grid, phis, qs, dS, SS, conv, iters, N, "bp",
                             time.perf_counter() - t0)
