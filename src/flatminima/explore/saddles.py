"""Transition states: doubly-nudged elastic bands, eigenvector-following refinement, index checks and the
connection of each saddle to the two minima it joins.

- :func:`dneb`: doubly-nudged elastic band (Trygubenko & Wales 2004) with the upwind tangent (Henkelman &
  Jonsson 2000) and a climbing image (Henkelman, Uberuaga & Jonsson 2000). All interior images are
  evaluated in one batched pass of ``potential.energy_gradient_batch`` (``batched=False``: one by one, the
  baseline of ``benchmarks/explore.py``). The band is relaxed by a force-based L-BFGS without line search
  (band forces are not the gradient of any function).
- :func:`refine_ts`: eigenvector-following (Cerjan & Miller 1981; Wales 1994) on the exact Hessian, built
  from exact Hessian-vector products in one batched pass, with the potential's zero modes projected out:
  uphill along the lowest eigenvector, downhill along all others, in a trust radius.
- :func:`refine_ts_hybrid`: hybrid eigenvector-following (Munro & Wales 1999) for large n: the uphill
  direction from :func:`lowest_mode` (Lanczos on exact HVPs, :func:`flatminima.linalg.eigsh`), no dense
  Hessian.
- :func:`connect_ts`: pushoffs along +-the negative eigenvector and batched quenches to both minima.
- :func:`local_connect`: DNEB between two minima, refinement of the band maxima, verification, connection,
  storage in the database.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import linalg
from ..errors import ConfigError
from .database import DENSE_HESSIAN_MAX, Database, TransitionState, hessian_summary
from .optimize import escape_saddle, lbfgs_batch

__all__ = ["Band", "TSResult", "dneb", "refine_ts", "refine_ts_hybrid", "lowest_mode", "connect_ts", "local_connect"]

#: largest dimension at which :func:`local_connect` refines saddles on the dense Hessian
DENSE_EF_MAX = 600
#: a DNEB step is halved when the band force grows more than this factor (at most MAX_BAND_HALVINGS times)
FORCE_GROWTH = 2.0
MAX_BAND_HALVINGS = 10


@dataclass
class Band:
    """A relaxed band: images (M+2, n) including the end points, energies (M+2,), climbing image index,
    iterations used, final RMS band force, number of energy/gradient evaluations of single images."""

    images: np.ndarray
    energies: np.ndarray
    climbing: int
    iterations: int
    rms: float
    n_evals: int

    def maxima(self) -> list[int]:
        """Interior images that are local maxima of the energy along the band, highest first."""
        E = self.energies
        idx = [i for i in range(1, len(E) - 1) if E[i] >= E[i - 1] and E[i] >= E[i + 1]]
        return sorted(idx, key=lambda i: -E[i])


def _tangents(images: np.ndarray, E: np.ndarray) -> np.ndarray:
    """Upwind tangents (M, n) of the interior images (Henkelman & Jonsson 2000), normalised."""
    xp, x, xm = images[2:], images[1:-1], images[:-2]
    Ep, Ec, Em = E[2:], E[1:-1], E[:-2]
    tp, tm = xp - x, x - xm
    up = (Ep > Ec) & (Ec > Em)
    down = (Ep < Ec) & (Ec < Em)
    dmax = np.maximum(np.abs(Ep - Ec), np.abs(Em - Ec))
    dmin = np.minimum(np.abs(Ep - Ec), np.abs(Em - Ec))
    mixed_hi = np.where(Ep > Em, dmax, dmin)[:, None] * tp + np.where(Ep > Em, dmin, dmax)[:, None] * tm
    tau = np.where(up[:, None], tp, np.where(down[:, None], tm, mixed_hi))
    norm = np.linalg.norm(tau, axis=1, keepdims=True)
    bad = norm[:, 0] < 1e-300
    tau[bad] = (xp - xm)[bad]
    return tau / np.maximum(np.linalg.norm(tau, axis=1, keepdims=True), 1e-300)


def dneb(
    potential,
    x_a: np.ndarray,
    x_b: np.ndarray,
    n_images: int = 10,
    k: float = 1.0,
    max_iter: int = 500,
    gtol: float = 1e-3,
    climb: bool = True,
    batched: bool = True,
    max_step: float = 0.1,
    memory: int = 8,
) -> Band:
    """Relax a doubly-nudged elastic band between two points (normally two minima).

    Parameters
    ----------
    x_a, x_b : (n,) end points (fixed), first brought into register by the potential's symmetry alignment
        (cluster: translation/rotation/permutation; network: canonical form).
    n_images : interior images M (linear interpolation to start).
    k : spring constant.
    gtol : convergence on the RMS band force per coordinate.
    climb : switch the highest image to climbing once the band force is below ``10 * gtol``
        (or after half the iterations).
    batched : evaluate all images in one ``energy_gradient_batch`` call (else a Python loop).
    """
    if n_images < 1 or k <= 0 or max_iter < 1:
        raise ConfigError("need n_images >= 1, k > 0, max_iter >= 1")
    _, a, b = potential.align(np.asarray(x_a, dtype=np.float64), np.asarray(x_b, dtype=np.float64))
    M, n = int(n_images), a.size
    t = np.linspace(0.0, 1.0, M + 2)[:, None]
    images = (1 - t) * a + t * b
    Eend, _ = potential.energy_gradient_batch(np.stack([a, b]))

    def evaluate(X):
        if batched:
            return potential.energy_gradient_batch(X)
        out = [potential.energy_gradient(x) for x in X]
        return np.array([o[0] for o in out]), np.stack([o[1] for o in out])

    def band_force(Xint):
        images[1:-1] = Xint
        Ei, Gi = evaluate(Xint)
        E = np.concatenate([[Eend[0]], Ei, [Eend[1]]])
        tau = _tangents(images, E)
        g_par = np.einsum("mn,mn->m", Gi, tau)
        g_perp = Gi - g_par[:, None] * tau
        dl = np.linalg.norm(images[1:-1] - images[:-2], axis=1)
        dr = np.linalg.norm(images[2:] - images[1:-1], axis=1)
        spring_par = (k * (dr - dl))[:, None] * tau  # a force, along the tangent
        # doubly nudged: the part of the perpendicular spring gradient that is not along the true gradient
        gs = k * (2 * images[1:-1] - images[:-2] - images[2:])
        gs_perp = gs - np.einsum("mn,mn->m", gs, tau)[:, None] * tau
        gnorm = np.linalg.norm(g_perp, axis=1, keepdims=True)
        ghat = np.where(gnorm > 1e-300, g_perp / np.maximum(gnorm, 1e-300), 0.0)
        F = g_perp - spring_par + gs_perp - np.einsum("mn,mn->m", gs_perp, ghat)[:, None] * ghat
        ci = -1
        if climbing[0]:
            ci = int(np.argmax(Ei))
            F[ci] = Gi[ci] - 2 * g_par[ci] * tau[ci]
        return E, F, ci

    climbing = [False]
    x = images[1:-1].reshape(-1).copy()
    S, Y = [], []
    E, F, ci = band_force(x.reshape(M, n))
    g = F.reshape(-1)
    g_floor = float(np.linalg.norm(g))
    it, rms = 0, np.inf
    for it in range(1, max_iter + 1):
        rms = float(np.linalg.norm(g) / np.sqrt(g.size))
        if climb and not climbing[0] and (rms < 10 * gtol or it > max_iter // 2):
            climbing[0] = True
            S, Y = [], []
            E, F, ci = band_force(x.reshape(M, n))
            g = F.reshape(-1)
            g_floor = float(np.linalg.norm(g))
            continue
        if rms < gtol and (climbing[0] or not climb):
            break
        # L-BFGS direction from the band "gradient"
        q = g.copy()
        alphas = []
        for s, y in reversed(list(zip(S, Y))):
            al = (s @ q) / (y @ s)
            alphas.append(al)
            q -= al * y
        gamma = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if S else 0.01
        z = gamma * q
        for (s, y), al in zip(zip(S, Y), reversed(alphas)):
            z += (al - (y @ z) / (y @ s)) * s
        d = -z
        if d @ g > 0:
            d, S, Y = -0.01 * g, [], []
        per_image = np.linalg.norm(d.reshape(M, n), axis=1).max()
        if per_image > max_step:
            d *= max_step / per_image
        for _ in range(MAX_BAND_HALVINGS):
            x_new = x + d
            E, F, ci = band_force(x_new.reshape(M, n))
            g_new = F.reshape(-1)
            # the band force is no gradient, so no energy can vet a step; a step after which the band force
            # exceeds FORCE_GROWTH times the smallest one seen (since the climbing image was switched on), or
            # an image left the finite part of the surface, overshot: halve it and drop the curvature pairs that
            # proposed it (unchecked, such steps let the images, above all the climbing one, run away uphill)
            g_norm = np.linalg.norm(g_new)
            if np.isfinite(g_norm) and g_norm <= FORCE_GROWTH * g_floor:
                break
            d *= 0.5
            S, Y = [], []
        s, y = x_new - x, g_new - g
        if s @ y > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            S.append(s)
            Y.append(y)
            if len(S) > memory:
                S.pop(0)
                Y.pop(0)
        else:
            S, Y = [], []
        x, g = x_new, g_new
        g_floor = min(g_floor, float(np.linalg.norm(g)))
    images[1:-1] = x.reshape(M, n)
    return Band(images.copy(), E.copy(), ci + 1 if ci >= 0 else int(np.argmax(E[1:-1])) + 1, it, rms,
                (it + 1) * M)


@dataclass
class TSResult:
    """A refined saddle: x (n,), energy, eigenvalue (lowest), eigvec (n,), converged, iterations, rms gradient."""

    x: np.ndarray
    energy: float
    eigenvalue: float
    eigvec: np.ndarray
    converged: bool
    iterations: int
    rms: float


def refine_ts(potential, x0: np.ndarray, gtol: float = 1e-6, max_iter: int = 200, max_step: float = 0.1) -> TSResult:
    """Eigenvector-following to a first-order saddle from ``x0`` (n,), on the exact Hessian.

    Each step diagonalises the Hessian (from n exact HVPs in one batched pass; zero modes projected out)
    and moves uphill along the lowest eigenvector and downhill along every other one, with the step of
    Wales (1994): ``h_i = +-2 F_i / (|l_i| (1 + sqrt(1 + 4 F_i^2 / l_i^2)))``, F_i = g . u_i, the step
    capped at ``max_step``. Converged when the RMS gradient (zero modes removed) is below ``gtol`` and the
    lowest eigenvalue is negative.
    """
    x = np.array(x0, dtype=np.float64)
    n = x.size
    lam = U = None
    conv, rms, it = False, np.inf, 0
    while it < max_iter:
        it += 1
        e, g = potential.energy_gradient(x)
        lam, U = potential.hessian_eigh(x)
        Z = potential.zero_modes(x)
        if Z.shape[1]:
            g = g - Z @ (Z.T @ g)
        rms = float(np.linalg.norm(g) / np.sqrt(n))
        if rms < gtol and lam[0] < 0:
            conv = True
            break
        F = U.T @ g
        scale = max(np.abs(lam).max(), 1e-300)
        al = np.maximum(np.abs(lam), 1e-10 * scale)
        h = -2.0 * F / (al * (1.0 + np.sqrt(1.0 + 4.0 * F * F / (al * al))))
        h[0] = -h[0]  # uphill along the lowest mode
        step = U @ h
        nrm = np.linalg.norm(step)
        if nrm > max_step:
            step *= max_step / nrm
        x = x + step
    e = potential.energy(x)
    return TSResult(x, float(e), float(lam[0]), U[:, 0].copy(), conv, it, rms)


def lowest_mode(potential, x: np.ndarray, v0: np.ndarray | None = None, tol: float = 1e-8) -> tuple[float, np.ndarray]:
    """Lowest Hessian eigenpair at x (n,) from exact HVPs only (thick-restarted Lanczos,
    :func:`flatminima.linalg.eigsh`, to a relative residual ``tol``, from ``v0`` (n,) when given), with the
    potential's zero modes shifted to the top of the spectrum. Returns (eigenvalue, unit eigenvector (n,))."""
    n = x.size
    Z = potential.zero_modes(x)
    probe = np.random.default_rng(0).standard_normal(n)
    shift = 100.0 * (np.linalg.norm(potential.hvp(x, probe / np.linalg.norm(probe))) + 1.0)

    def mv(u: torch.Tensor) -> torch.Tensor:
        u = u.numpy()
        return torch.from_numpy(potential.hvp(x, u) + shift * (Z @ (Z.T @ u)))

    eig = linalg.eigsh(mv, dim=n, which="SA", tol=tol, criterion="residual", max_matvecs=50 * n,
                       v0=None if v0 is None else torch.as_tensor(v0))
    v = eig.vectors[0].numpy()
    return float(eig.values[0]), v / np.linalg.norm(v)


def refine_ts_hybrid(potential, x0: np.ndarray, v0: np.ndarray | None = None, gtol: float = 1e-6,
                     max_iter: int = 300, max_step: float = 0.1, n_perp: int = 10) -> TSResult:
    """Hybrid eigenvector-following (Munro & Wales 1999) for large n: only exact HVPs, no dense Hessian.

    Each cycle: the lowest eigenpair (l, v) by Lanczos on exact HVPs; an uphill EF step along v,
    ``h = 2F / (|l| (1 + sqrt(1 + 4 F^2 / l^2)))`` (F = g . v; a full ``max_step`` uphill while l > 0); then
    up to ``n_perp`` Barzilai-Borwein descent steps on the gradient with its v and zero-mode parts removed.
    """
    x = np.array(x0, dtype=np.float64)
    n = x.size
    v = None if v0 is None else np.asarray(v0, dtype=np.float64)
    lam, conv, rms, it = 0.0, False, np.inf, 0
    while it < max_iter:
        it += 1
        lam, v = lowest_mode(potential, x, v)
        Z = potential.zero_modes(x)
        e, g = potential.energy_gradient(x)
        if Z.shape[1]:
            g = g - Z @ (Z.T @ g)
        rms = float(np.linalg.norm(g) / np.sqrt(n))
        if rms < gtol and lam < 0:
            conv = True
            break
        F = float(g @ v)
        if lam < 0:
            h = 2.0 * F / (abs(lam) * (1.0 + np.sqrt(1.0 + 4.0 * F * F / lam ** 2)))
        else:
            h = np.sign(F) * max_step
        x = x + np.clip(h, -max_step, max_step) * v
        prev = None
        for _ in range(n_perp):
            _, g = potential.energy_gradient(x)
            gp = g - (g @ v) * v
            if Z.shape[1]:
                gp = gp - Z @ (Z.T @ gp)
            if np.linalg.norm(gp) / np.sqrt(n) < gtol:
                break
            if prev is None:
                alpha = 0.1 / max(1.0, np.linalg.norm(gp))
            else:
                s, y = x - prev[0], gp - prev[1]
                sy = s @ y
                alpha = (s @ s) / sy if sy > 0 else 0.1 / max(1.0, np.linalg.norm(gp))
            step = -alpha * gp
            nrm = np.linalg.norm(step)
            if nrm > max_step:
                step *= max_step / nrm
            prev = (x, gp)
            x = x + step
    return TSResult(x, float(potential.energy(x)), float(lam), v.copy(), conv, it, rms)


def connect_ts(potential, db: Database, ts: TSResult, gtol: float = 1e-6, rel_tol: float = 1e-8,
               push: float = 1e-2, max_push: float = 0.5) -> tuple[TransitionState, int, int] | None:
    """Verify a refined saddle (Hessian index exactly 1) and connect it to its two minima.

    Pushoffs ``x_ts +- delta v`` (v: the negative eigenvector; delta doubled from ``push`` until both
    sides are below the saddle energy with an RMS gradient above ``10 gtol``, so that the quenches really
    descend) are quenched together; both ends must be minima (Hessian index 0; an end that stopped on a
    saddle's shoulder is pushed on downhill by :func:`.optimize.escape_saddle`); both are stored, and the TS
    is stored when they differ. Returns (stored TS, min id on the - side, min id on the + side) or None.
    """
    if not ts.converged:
        return None
    log_prod, n_neg, lam = hessian_summary(potential, ts.x, rel_tol)
    if n_neg != 1:
        return None
    v = ts.eigvec / np.linalg.norm(ts.eigvec)
    n = v.size
    delta = push
    while True:  # both sides below the saddle, with gradients well above the quench tolerance (flat saddles)
        P = np.stack([ts.x - delta * v, ts.x + delta * v])
        Ep, Gp = potential.energy_gradient_batch(P)
        rms_p = np.linalg.norm(Gp, axis=1) / np.sqrt(n)
        ok = np.all(Ep < ts.energy) and np.all(rms_p > 10 * gtol)
        if ok or delta >= max_push:
            break
        delta *= 2
    if not ok:
        return None
    qkw = dict(gtol=gtol, max_step=potential.default_max_step)
    r = lbfgs_batch(potential.energy_gradient_batch, P, **qkw)
    if not r.converged.all() or not all(potential.is_valid(x) for x in r.x):
        return None
    ends = [(None, None), (None, None)]
    if potential.ndim <= DENSE_HESSIAN_MAX:
        # both ends must be true minima: a quench that stopped on a saddle's shoulder is pushed on downhill
        for i in range(2):
            x, e, ok, lp, neg = escape_saddle(potential, r.x[i], qkw, rel_tol)
            if not ok or not potential.is_valid(x):
                return None
            r.x[i], r.energy[i], ends[i] = x, e, (lp, neg)
    if np.any(r.energy >= ts.energy):
        return None
    m1, _ = db.add_minimum(r.energy[0], r.x[0], *ends[0])
    m2, _ = db.add_minimum(r.energy[1], r.x[1], *ends[1])
    if m1.id == m2.id:
        return None
    neg = float(lam[lam < 0][0]) if np.any(lam < 0) else ts.eigenvalue
    stored, _ = db.add_ts(ts.energy, ts.x, m1.id, m2.id, eigenvalue=neg, log_prod=log_prod,
                          props={"n_neg": n_neg, "rms_gradient": ts.rms})
    return stored, m1.id, m2.id


def local_connect(potential, db: Database, id_a: int, id_b: int, n_images: int = 10, k: float = 1.0,
                  nrefine: int = 3, band_iter: int = 200, band_gtol: float = 1e-2,
                  ts_gtol: float = 1e-6) -> list[tuple[TransitionState, int, int]]:
    """One local connection attempt between stored minima ``id_a`` and ``id_b``: DNEB with climbing image,
    refinement of up to ``nrefine`` band maxima (highest first), index-1 check, pushoffs, storage.
    Returns the (TS, min-, min+) triples that were found (new or already stored).

    The band is only a starting guess for the refinement, so it is relaxed loosely (RMS band force
    ``band_gtol``, at most ``band_iter`` iterations): eigenvector-following converges the saddle itself.

    Refinement: eigenvector-following on the dense exact Hessian (:func:`refine_ts`) up to
    ``DENSE_EF_MAX`` coordinates, hybrid eigenvector-following on HVPs only (:func:`refine_ts_hybrid`) above."""
    a, b = db.minimum(id_a), db.minimum(id_b)
    band = dneb(potential, a.coords, b.coords, n_images=n_images, k=k, max_iter=band_iter, gtol=band_gtol)
    cands = [band.climbing] + [i for i in band.maxima() if i != band.climbing]
    found = []
    for i in cands[:nrefine]:
        if potential.ndim <= DENSE_EF_MAX:
            ts = refine_ts(potential, band.images[i], gtol=ts_gtol)
        else:
            tau = band.images[i + 1] - band.images[i - 1]
            ts = refine_ts_hybrid(potential, band.images[i], v0=tau / np.linalg.norm(tau), gtol=ts_gtol)
        res = connect_ts(potential, db, ts, gtol=ts_gtol)
        if res is not None:
            found.append(res)
    return found
