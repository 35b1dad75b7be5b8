"""Potentials for landscape exploration: flat coordinates in, float64 energies, gradients and HVPs out.

Every potential works on flat numpy coordinate vectors ``x`` of shape ``(n,)`` and offers

- ``energy(x) -> float``, ``gradient(x) -> (n,)``, ``energy_gradient(x) -> (float, (n,))``;
- ``energy_gradient_batch(X) -> ((K,), (K, n))``: K points in one vectorised pass (basin-hopping walkers,
  band images);
- ``hvp(x, v) -> (n,)`` (``v`` may be ``(K, n)``): exact Hessian-vector products; ``hessian(x) -> (n, n)``;
- ``zero_modes(x) -> (n, z)``: an orthonormal basis of the exact zero modes of the Hessian
  (translations and rotations of a cluster; none for a network with an L2 penalty);
  ``hessian_eigh(x)``: the Hessian's eigenpairs with those zero modes removed;
- ``canonical(x)`` / ``distance(a, b)`` / ``align(a, b)``: symmetry-aware comparison of configurations;
- ``random_coords(rng)`` and ``perturb(x, step, rng)``: basin-hopping moves.

The validation potentials (:class:`LennardJones`, :class:`MullerBrown`) have known answers; the
:class:`NetworkPotential` wraps any :class:`~flatminima.Landscape` of a fully-connected network (the
default of the studies: a tanh MLP with softmax cross-entropy plus ``l2 |w|^2``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numba
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..errors import ConfigError
from ..landscape import Landscape
from ..models import mlp

__all__ = ["Potential", "LennardJones", "MullerBrown", "NetworkPotential", "TanhCrossEntropy", "tanh_network_potential"]


def _as_vec(x, n: int, name: str = "x") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (n,):
        raise ConfigError(f"{name} must have shape ({n},), got {x.shape}")
    return x


def _as_batch(X, n: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n:
        raise ConfigError(f"X must have shape (K, {n}), got {X.shape}")
    return X


class Potential(ABC):
    """Base class. Subclasses set ``ndim`` and implement ``energy_gradient_batch``, ``hvp`` and
    ``random_coords``. Class attributes: ``dist_tol`` (duplicate-detection distance), ``default_step``
    (basin-hopping step), ``default_max_step`` (L-BFGS step cap)."""

    ndim: int
    dist_tol = 1e-3
    default_step = 0.5
    default_max_step = 0.2

    # ---------------------------------------------------------------- evaluation
    @abstractmethod
    def energy_gradient_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies (K,) and gradients (K, n) of K points X (K, n)."""

    def energy_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """(E(x), grad E(x)) for one point (n,)."""
        E, G = self.energy_gradient_batch(_as_vec(x, self.ndim)[None])
        return float(E[0]), G[0]

    def energy(self, x: np.ndarray) -> float:
        return self.energy_gradient(x)[0]

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.energy_gradient(x)[1]

    @abstractmethod
    def hvp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Exact Hessian-vector product; ``v`` (n,) or (K, n)."""

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """Dense (n, n) Hessian from n exact HVPs in one batched pass (small n only)."""
        H = self.hvp(_as_vec(x, self.ndim), np.eye(self.ndim))
        return 0.5 * (H + H.T)

    def hessian_eigh(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (n - z,) in ascending order and orthonormal eigenvectors (n, n - z) of the exact
        Hessian at x with its z zero modes (:meth:`zero_modes`) removed: they are shifted above the whole
        spectrum (a Gershgorin bound) and dropped."""
        H = self.hessian(x)
        Z = self.zero_modes(x)
        keep = H.shape[0] - Z.shape[1]
        if Z.shape[1]:
            H = H + 10.0 * (np.abs(H).sum(1).max() + 1.0) * Z @ Z.T
        lam, U = np.linalg.eigh(H)
        return lam[:keep], U[:, :keep]

    # ---------------------------------------------------------------- geometry / symmetry
    def zero_modes(self, x: np.ndarray) -> np.ndarray:
        """Orthonormal basis (n, z) of the exact zero modes at x (default: none)."""
        return np.zeros((self.ndim, 0))

    def canonical(self, x: np.ndarray) -> np.ndarray:
        """A representative of x's symmetry class (default: x itself)."""
        return np.asarray(x, dtype=np.float64).copy()

    def align(self, a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(distance, a', b'): symmetry-equivalent copies of a and b that are close to each other."""
        a, b = self.canonical(a), self.canonical(b)
        return float(np.linalg.norm(a - b)), a, b

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Distance between a and b, minimised over the potential's symmetries."""
        return self.align(a, b)[0]

    def same_minimum(self, a: np.ndarray, b: np.ndarray, tol: float) -> bool:
        """True when a and b are the same minimum up to symmetry (distance below ``tol``)."""
        return self.distance(a, b) < tol

    @abstractmethod
    def random_coords(self, rng: np.random.Generator) -> np.ndarray:
        """A random starting configuration (n,)."""

    def perturb(self, x: np.ndarray, step: float, rng: np.random.Generator) -> np.ndarray:
        """Uniform random displacement in [-step, step]^n."""
        return x + rng.uniform(-step, step, size=x.shape)

    def is_valid(self, x: np.ndarray) -> bool:
        """Whether a quenched configuration is acceptable (e.g. no evaporated atom)."""
        return True


@numba.njit(cache=True)
def _lj_energy_gradient(R):  # pragma: no cover - compiled
    """Lennard-Jones energies (K,) and gradients (K, 3 N) of K clusters R (K, N, 3), pair by pair."""
    K, N, _ = R.shape
    E = np.zeros(K)
    G = np.zeros((K, N, 3))
    for k in range(K):
        e = 0.0
        for i in range(N):
            xi, yi, zi = R[k, i, 0], R[k, i, 1], R[k, i, 2]
            gx = 0.0
            gy = 0.0
            gz = 0.0
            for j in range(i + 1, N):
                dx, dy, dz = xi - R[k, j, 0], yi - R[k, j, 1], zi - R[k, j, 2]
                ir2 = 1.0 / (dx * dx + dy * dy + dz * dz)
                ir6 = ir2 * ir2 * ir2
                e += ir6 * ir6 - ir6
                f = (24.0 * ir6 - 48.0 * ir6 * ir6) * ir2  # (1/r) dphi/dr
                gx += f * dx
                gy += f * dy
                gz += f * dz
                G[k, j, 0] -= f * dx
                G[k, j, 1] -= f * dy
                G[k, j, 2] -= f * dz
            G[k, i, 0] += gx
            G[k, i, 1] += gy
            G[k, i, 2] += gz
        E[k] = 4.0 * e
    return E, G.reshape(K, 3 * N)


# ============================================================================== Lennard-Jones
class LennardJones(Potential):
    """Lennard-Jones cluster ``E = 4 sum_{i<j} (r_ij^-12 - r_ij^-6)`` (epsilon = sigma = 1).

    Coordinates are flat ``(3 * n_atoms,)`` vectors ``[x0, y0, z0, x1, ...]``. Known global minima:
    LJ7 -16.505384, LJ13 -44.326801, LJ38 -173.928427 (Cambridge Cluster Database).

    Symmetries: translation, rotation, inversion and permutation of atoms. ``distance`` aligns by centring,
    Hungarian permutation and Kabsch rotation (with inversion); duplicate detection (``same_minimum``)
    compares the sorted list of interatomic distances, which is invariant under all of them.
    """

    dist_tol = 1e-3  # on the sorted interatomic distances
    default_step = 0.4

    def __init__(self, n_atoms: int) -> None:
        if int(n_atoms) < 2:
            raise ConfigError(f"a Lennard-Jones cluster needs at least 2 atoms, got {n_atoms}")
        self.n_atoms = int(n_atoms)
        self.ndim = 3 * self.n_atoms
        #: radius of the spherical container used by random moves (atoms beyond it are pulled back)
        self.radius = 1.0 + 0.75 * self.n_atoms ** (1 / 3)
        self._iu = np.triu_indices(self.n_atoms, 1)

    def __repr__(self) -> str:
        return f"LennardJones(n_atoms={self.n_atoms})"

    def _pairs(self, X: np.ndarray):
        R = X.reshape(X.shape[0], self.n_atoms, 3)
        D = R[:, :, None, :] - R[:, None, :, :]  # (K, N, N, 3): x_i - x_j
        s = np.einsum("kijc,kijc->kij", D, D)
        np.einsum("kii->ki", s)[...] = np.inf  # no self-interaction
        return R, D, s

    def energy_gradient_batch(self, X):
        """Energies (K,) and gradients (K, 3 n_atoms) of K clusters X (K, 3 n_atoms): one compiled pass over
        the atom pairs of every cluster (:func:`_lj_energy_gradient`)."""
        X = np.ascontiguousarray(_as_batch(X, self.ndim))
        return _lj_energy_gradient(X.reshape(X.shape[0], self.n_atoms, 3))

    def hvp(self, x, v):
        x = _as_vec(x, self.ndim)
        V = np.asarray(v, dtype=np.float64)
        single = V.ndim == 1
        V = V.reshape(-1, self.n_atoms, 3)
        _, D, s = self._pairs(x[None])
        D, s = D[0], s[0]
        inv = 1.0 / s
        i6 = inv * inv * inv
        dphi = 4.0 * (-6.0 * i6 * i6 + 3.0 * i6) * inv
        d2phi = 4.0 * (42.0 * i6 * i6 - 12.0 * i6) * inv * inv
        dV = V[:, :, None, :] - V[:, None, :, :]  # (K, N, N, 3): v_i - v_j
        proj = np.einsum("ijc,kijc->kij", D, dV)
        out = 2.0 * np.einsum("ij,kijc->kic", dphi, dV) + 4.0 * np.einsum("ij,kij,ijc->kic", d2phi, proj, D)
        out = out.reshape(-1, self.ndim)
        return out[0] if single else out

    def zero_modes(self, x):
        R = _as_vec(x, self.ndim).reshape(self.n_atoms, 3)
        R = R - R.mean(0)
        modes = []
        for c in range(3):
            t = np.zeros((self.n_atoms, 3))
            t[:, c] = 1.0
            modes.append(t.ravel())
        for c in range(3):
            axis = np.zeros(3)
            axis[c] = 1.0
            modes.append(np.cross(axis, R).ravel())
        Q, r = np.linalg.qr(np.stack(modes, 1))
        keep = np.abs(np.diag(r)) > 1e-8 * max(1.0, np.abs(r).max())  # linear molecules have 5 modes
        return Q[:, keep]

    def random_coords(self, rng):
        # uniform in a sphere of radius ~ the cluster radius at liquid-like density
        r = 0.8 * self.n_atoms ** (1 / 3)
        P = rng.normal(size=(self.n_atoms, 3))
        P *= (r * rng.uniform(size=(self.n_atoms, 1)) ** (1 / 3)) / np.linalg.norm(P, axis=1, keepdims=True)
        return P.ravel()

    def perturb(self, x, step, rng):
        R = x.reshape(self.n_atoms, 3) + rng.uniform(-step, step, size=(self.n_atoms, 3))
        R -= R.mean(0)
        norm = np.linalg.norm(R, axis=1, keepdims=True)
        R = np.where(norm > self.radius, R * (self.radius / np.maximum(norm, 1e-300)), R)
        return R.ravel()

    def atom_energies(self, x: np.ndarray) -> np.ndarray:
        """Energy of each atom (n_atoms,): half its pair energies, so that they sum to the total."""
        R = np.asarray(x, dtype=np.float64).reshape(self.n_atoms, 3)
        s = np.sum((R[:, None] - R[None]) ** 2, axis=-1)
        np.fill_diagonal(s, np.inf)
        i6 = s ** -3.0
        return 2.0 * np.sum(i6 * i6 - i6, axis=1)

    def surface_move(self, x: np.ndarray, rng: np.random.Generator, n_move: int = 2) -> np.ndarray:
        """The ``n_move`` least-bound atoms (highest :meth:`atom_energies`) moved to random sites just outside
        the surface of the rest: along a uniformly random direction u from the centre of the rest, at
        ``max_j (r_j - c) . u + 0.5``, so that the quench settles each on the surface. x: (3 n_atoms,)."""
        R = np.array(x, dtype=np.float64).reshape(self.n_atoms, 3)
        move = np.argsort(self.atom_energies(x))[::-1][:n_move]
        rest = np.delete(R, move, axis=0)
        c = rest.mean(0)
        for i in move:
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            R[i] = c + (np.max((rest - c) @ u) + 0.5) * u
            rest = np.vstack([rest, R[i]])
        return (R - R.mean(0)).ravel()

    def is_valid(self, x):
        R = np.asarray(x).reshape(self.n_atoms, 3)
        d = np.linalg.norm(R[:, None] - R[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        return bool(np.all(d.min(1) < 1.6))  # every atom has a bonded neighbour (none evaporated)

    # -------- symmetry
    def fingerprint(self, x: np.ndarray) -> np.ndarray:
        """Sorted interatomic distances (n_atoms*(n_atoms-1)/2,): invariant under every symmetry."""
        R = np.asarray(x).reshape(self.n_atoms, 3)
        return np.sort(np.linalg.norm(R[:, None] - R[None], axis=-1)[self._iu])

    def same_minimum(self, a, b, tol):
        return float(np.max(np.abs(self.fingerprint(a) - self.fingerprint(b)))) < tol

    def canonical(self, x):
        R = np.asarray(x, dtype=np.float64).reshape(self.n_atoms, 3)
        return (R - R.mean(0)).ravel()

    def align(self, a, b):
        """Minimum distance over translation, rotation, inversion and permutation (approximate: Hungarian +
        Kabsch iterations from the identity, the inversion and 8 random starting orientations, seeded).
        Returns (distance, a centred, b aligned)."""
        A = self.canonical(a).reshape(self.n_atoms, 3)
        B0 = self.canonical(b).reshape(self.n_atoms, 3)
        identity = np.arange(self.n_atoms)
        a2 = np.sum(A * A, axis=1)[:, None]
        best = (np.inf, None)
        for Rot in _ALIGN_STARTS:
            B = B0 @ Rot.T
            for it in range(10):
                _, perm = linear_sum_assignment(a2 + np.sum(B * B, axis=1)[None] - 2.0 * A @ B.T)
                if it and np.array_equal(perm, identity):  # same assignment: Kabsch would not move B
                    break
                B = B[perm]
                U, _, Vt = np.linalg.svd(B.T @ A)  # Kabsch: the orthogonal map of B onto A (inversion allowed)
                B = B @ U @ Vt
            d = float(np.linalg.norm(A - B))
            if d < best[0]:
                best = (d, B)
        return best[0], A.ravel(), best[1].ravel()


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    Q, R = np.linalg.qr(rng.normal(size=(3, 3)))
    return Q * np.sign(np.diag(R))


#: starting orientations of :meth:`LennardJones.align`: identity, inversion and 8 random (seeded) rotations
_ALIGN_STARTS = (lambda rng: [np.eye(3), -np.eye(3)] + [_random_rotation(rng) for _ in range(8)])(
    np.random.default_rng(0))


# ============================================================================== Mueller-Brown
class MullerBrown(Potential):
    """The 2-D Mueller-Brown surface (Mueller & Brown, Theor. Chim. Acta 53, 75 (1979)).

    ``E(x, y) = sum_k A_k exp(a_k (x - x0_k)^2 + b_k (x - x0_k)(y - y0_k) + c_k (y - y0_k)^2)``.
    Three minima and two saddles; coordinates are flat ``(2,)`` vectors.
    """

    ndim = 2
    dist_tol = 1e-3
    default_step = 0.4
    default_max_step = 0.05
    A = np.array([-200.0, -100.0, -170.0, 15.0])
    a = np.array([-1.0, -1.0, -6.5, 0.7])
    b = np.array([0.0, 0.0, 11.0, 0.6])
    c = np.array([-10.0, -10.0, -6.5, 0.7])
    x0 = np.array([1.0, 0.0, -0.5, -1.0])
    y0 = np.array([0.0, 0.5, 1.5, 1.0])

    def __repr__(self) -> str:
        return "MullerBrown()"

    def _terms(self, X):
        dx = X[:, :1] - self.x0  # (K, 4)
        dy = X[:, 1:2] - self.y0
        e = self.A * np.exp(self.a * dx * dx + self.b * dx * dy + self.c * dy * dy)
        ux = 2 * self.a * dx + self.b * dy
        uy = self.b * dx + 2 * self.c * dy
        return e, ux, uy

    def energy_gradient_batch(self, X):
        X = _as_batch(X, 2)
        e, ux, uy = self._terms(X)
        return e.sum(1), np.stack([(e * ux).sum(1), (e * uy).sum(1)], 1)

    def hessian(self, x):
        x = _as_vec(x, 2)
        e, ux, uy = self._terms(x[None])
        e, ux, uy = e[0], ux[0], uy[0]
        hxx = (e * (ux * ux + 2 * self.a)).sum()
        hxy = (e * (ux * uy + self.b)).sum()
        hyy = (e * (uy * uy + 2 * self.c)).sum()
        return np.array([[hxx, hxy], [hxy, hyy]])

    def hvp(self, x, v):
        return np.asarray(v, dtype=np.float64) @ self.hessian(x)  # H symmetric: (K, 2) @ H = (H v_k)_k

    def random_coords(self, rng):
        return np.array([rng.uniform(-1.5, 1.2), rng.uniform(-0.5, 2.0)])

    def perturb(self, x, step, rng):
        return np.clip(x + rng.uniform(-step, step, size=2), [-2.0, -1.0], [1.5, 2.5])


# ============================================================================== networks
class NetworkPotential(Potential):
    """The loss of a fully-connected network as a potential, built on a :class:`~flatminima.Landscape`.

    Energies and gradients of K points come from the landscape's one batched forward pass and autograd
    (:meth:`~flatminima.Landscape.batched_loss_and_grad`), Hessian-vector products from its
    forward-over-reverse :meth:`~flatminima.Landscape.hvp`.

    Parameters
    ----------
    landscape : Landscape
        Full-batch loss (use ``dtype=torch.float64`` and ``l2 > 0`` for a landscape with isolated minima).
        The model must be a chain of ``nn.Linear`` layers and elementwise activations (optionally after an
        ``nn.Flatten``; :attr:`flatminima.forward.BatchedForward.chain`), e.g. :func:`flatminima.models.mlp`,
        with every Linear weight and bias in the flat parameter vector.

    Notes
    -----
    Symmetries: permutations of the hidden units of every layer and, when every activation is ``tanh``
    (odd), the sign flip of a unit's incoming weights, bias and outgoing weights. ``canonical`` maps a
    weight vector to a representative (per layer, in order: flip signs so that each unit's bias -- or its
    largest incoming weight when there is no bias -- is positive, then sort units by that value), so
    symmetric copies of one network coincide exactly. ``align`` (hence ``distance`` and ``same_minimum``)
    minimises the distance over those symmetries: from the canonical forms, each hidden layer in turn gets the
    permutation and signs of its units that bring the second network closest to the first (a linear
    assignment, exact for one hidden layer), sweeping the layers until no sweep shortens the distance. The
    canonical form alone is discontinuous where two sort keys are nearly equal or a bias is near zero: two
    quenches of one minimum can then have canonical forms far apart; the alignment does not depend on them.
    """

    #: symmetry-aware distance below which two quenched networks are the same minimum (flat directions of
    #: small-l2 networks leave ~1e-3 positional noise at a quench tolerance of 1e-6)
    dist_tol = 0.05
    #: at most this many sweeps over the hidden layers in :meth:`align`
    ALIGN_SWEEPS = 10

    def __init__(self, landscape: Landscape) -> None:
        if not isinstance(landscape, Landscape):
            raise ConfigError(f"landscape must be a flatminima.Landscape, got {type(landscape).__name__}")
        self.landscape = landscape
        self.ndim = landscape.n_params
        chain = landscape.batched_forward.chain
        linears = [s for s in chain or () if s.kind == "linear"]
        if not linears or any(n not in landscape.names for s in linears for n in (s.weight, s.bias) if n):
            raise ConfigError("NetworkPotential needs a chain of Linear layers and elementwise activations whose "
                              "weights and biases are all trainable")
        self._layers = [(s.weight, s.bias) for s in linears]
        self.odd = all(isinstance(s.module, nn.Tanh) for s in chain if s.kind == "act")
        #: the closed-form kernel (:class:`TanhCrossEntropy`) when it applies, else None
        self.kernel = TanhCrossEntropy.for_landscape(landscape)
        offsets = np.cumsum([0, *landscape.numels])
        self._where = {n: (slice(int(o), int(o) + k), tuple(sh))
                       for n, o, k, sh in zip(landscape.names, offsets, landscape.numels, landscape.shapes)}

    def __repr__(self) -> str:
        return f"NetworkPotential({self.landscape!r})"

    def _t(self, x) -> torch.Tensor:
        land = self.landscape
        return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=land.dtype, device=land.device)

    def energy_gradient_batch(self, X):
        """Energies (K,) and gradients (K, n) of K weight vectors X (K, n): the closed-form tanh/cross-entropy
        kernel where it applies (:class:`TanhCrossEntropy`), else the landscape's batched autograd pass."""
        X = _as_batch(X, self.ndim)
        if self.kernel is not None:
            return self.kernel(X)
        E, G = self.landscape.batched_loss_and_grad(self._t(X))
        return E.double().cpu().numpy(), G.double().cpu().numpy()

    def hvp(self, x, v):
        return self.landscape.hvp(self._t(_as_vec(x, self.ndim)), self._t(v)).double().cpu().numpy()

    def random_coords(self, rng):
        return rng.standard_normal(self.ndim)

    # -------- symmetry
    def canonical(self, x):
        land = self.landscape
        theta = torch.as_tensor(np.asarray(x, dtype=np.float64)).clone()
        p = {k: v.clone() for k, v in land.unflatten(theta).items()}
        for (w_in, b_in), (w_out, _) in zip(self._layers[:-1], self._layers[1:]):
            W, Wn = p[w_in], p[w_out]
            key = (p[b_in] if b_in is not None else W.gather(1, W.abs().argmax(1, keepdim=True)).squeeze(1)).clone()
            if self.odd:
                s = torch.where(key < 0, -1.0, 1.0).to(W.dtype)
                W.mul_(s[:, None])
                Wn.mul_(s[None, :])
                if b_in is not None:
                    p[b_in].mul_(s)
                key = key * s
            order = torch.argsort(key)
            p[w_in] = W[order]
            p[w_out] = Wn[:, order]
            if b_in is not None:
                p[b_in] = p[b_in][order]
        return land.flatten(p).numpy()

    def align(self, a, b):
        """(distance, a', b'): a' the canonical form of a (n,), b' the symmetric copy of b (n,) closest to a'
        that the layer-by-layer assignment finds (see the class notes); distance = |a' - b'|."""
        a = self.canonical(_as_vec(a, self.ndim, "a"))
        b = self.canonical(_as_vec(b, self.ndim, "b"))
        pa = {n: a[sl].reshape(sh) for n, (sl, sh) in self._where.items()}
        pb = {n: b[sl].reshape(sh).copy() for n, (sl, sh) in self._where.items()}
        hidden = [(w_in, b_in, w_out) for (w_in, b_in), (w_out, _) in zip(self._layers[:-1], self._layers[1:])]

        def units(p, w_in, b_in, w_out):  # one row per hidden unit: incoming weights, bias, outgoing weights
            cols = [p[w_in]] + ([p[b_in][:, None]] if b_in is not None else []) + [p[w_out].T]
            return np.concatenate(cols, axis=1)

        for _ in range(self.ALIGN_SWEEPS):
            improved = False
            for w_in, b_in, w_out in hidden:
                A, B = units(pa, w_in, b_in, w_out), units(pb, w_in, b_in, w_out)
                dot = A @ B.T  # (h, h): |A_i - s B_j|^2 = |A_i|^2 + |B_j|^2 - 2 s A_i.B_j
                gain = np.abs(dot) if self.odd else dot
                _, cols = linear_sum_assignment(-gain)
                if gain[np.arange(cols.size), cols].sum() <= np.trace(dot) + 1e-12 * (1.0 + np.abs(dot).sum()):
                    continue  # the current order and signs are (one of) the best for this layer
                improved = True
                sign = np.where(dot[np.arange(cols.size), cols] < 0, -1.0, 1.0) if self.odd else np.ones(cols.size)
                pb[w_in] = pb[w_in][cols] * sign[:, None]
                if b_in is not None:
                    pb[b_in] = pb[b_in][cols] * sign
                pb[w_out] = pb[w_out][:, cols] * sign[None, :]
            if not improved:
                break
        b = np.concatenate([pb[n].reshape(-1) for n in self._where])
        return float(np.linalg.norm(a - b)), a, b


class TanhCrossEntropy:
    """Energy and gradient of ``mean_p CE(f(x_p), y_p) + l2 |theta|^2`` for a chain ``Linear, Tanh, ...,
    Linear`` in closed form (forward pass, then backpropagation written out), for K weight vectors at once
    in numpy float64 batched matrix products.

    The network potentials of the archetypal-landscapes study are this (tanh MLP, softmax cross-entropy,
    full batch, float64, a few hundred examples, tens of parameters); there a generic autograd pass costs far
    more in framework overhead than in arithmetic, so the quench's energy/gradient calls take this path
    (``benchmarks/explore.py`` measures both; tests check it against autograd).

    Built by :meth:`for_landscape`, which returns None unless the landscape is on the CPU, not distributed,
    holds its data as tensors, uses the ``"cross_entropy"`` loss with integer class labels and at least two
    outputs, and its model is such a chain (optionally after ``nn.Flatten``) without buffers.
    """

    #: largest activation array (walkers x examples x width) of one pass; more walkers go in blocks
    BLOCK_ELEMENTS = 1 << 22

    def __init__(self, X: np.ndarray, y: np.ndarray, layers: list, l2: float) -> None:
        self.X, self.y, self.layers, self.l2 = X, y, layers, l2
        self.P = X.shape[0]
        self.rows = np.arange(self.P)
        self.width = max(w[2][0] for w in layers)

    @classmethod
    def for_landscape(cls, land: Landscape) -> TanhCrossEntropy | None:
        chain = land.batched_forward.chain
        if (chain is None or land.device.type != "cpu" or land.distributed or land.buffers
                or land.loss_name != "cross_entropy"):
            return None
        try:
            X, y = land.X, land.y
        except ConfigError:  # streamed data
            return None
        steps = [s for s in chain if s.kind != "flatten"]
        if chain[0].kind == "flatten" and any(s.kind == "flatten" for s in chain[1:]):
            return None
        kinds = [s.kind for s in steps]
        if kinds[::2] != ["linear"] * ((len(kinds) + 1) // 2) or kinds[1::2] != ["act"] * (len(kinds) // 2):
            return None
        if not all(isinstance(s.module, nn.Tanh) for s in steps if s.kind == "act"):
            return None
        if y.dim() != 1 or y.is_floating_point() or steps[-1].module.out_features < 2:
            return None
        offset, where = 0, {}
        for name, numel, shape in zip(land.names, land.numels, land.shapes):
            where[name] = (slice(offset, offset + numel), shape)
            offset += numel
        layers = []
        for s in steps[::2]:
            w, shape = where[s.weight]
            layers.append((w, where[s.bias][0] if s.bias else None, shape))
        Xn = X.detach().cpu().double().reshape(X.shape[0], -1).numpy()
        return cls(Xn, y.cpu().numpy().astype(np.int64), layers, land.l2)

    def __call__(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """T (K, n) -> energies (K,), gradients (K, n)."""
        K = T.shape[0]
        E = np.empty(K)
        G = np.empty_like(T)
        block = max(1, self.BLOCK_ELEMENTS // (self.P * self.width))
        for k in range(0, K, block):
            E[k : k + block], G[k : k + block] = self._block(T[k : k + block])
        return E, G

    def _block(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        K, P = T.shape[0], self.P
        Ws = [T[:, w].reshape(K, *shape) for w, _, shape in self.layers]  # (K, out, in)
        hs = [self.X]  # inputs of each layer: (P, in), then (K, P, in)
        for i, ((_, b, _), W) in enumerate(zip(self.layers, Ws)):
            z = hs[-1] @ W.transpose(0, 2, 1)  # (K, P, out)
            if b is not None:
                z += T[:, None, b]
            if i < len(Ws) - 1:
                hs.append(np.tanh(z))
        # softmax cross-entropy of the logits z (K, P, C), mean over the P examples
        zmax = z.max(-1, keepdims=True)
        ez = np.exp(z - zmax)
        se = ez.sum(-1, keepdims=True)
        E = ((np.log(se) + zmax)[..., 0].mean(1) - z[:, self.rows, self.y].mean(1)
             + self.l2 * np.einsum("kn,kn->k", T, T))
        G = 2.0 * self.l2 * T
        dz = ez / (se * P)  # d loss / d logits: (softmax - one-hot) / P
        dz[:, self.rows, self.y] -= 1.0 / P
        for i in range(len(Ws) - 1, -1, -1):
            w, b, shape = self.layers[i]
            G[:, w] += (dz.transpose(0, 2, 1) @ hs[i]).reshape(K, -1)
            if b is not None:
                G[:, b] += dz.sum(1)
            if i:
                dz = (dz @ Ws[i]) * (1.0 - hs[i] * hs[i])
        return E, G


def tanh_network_potential(X, y, hidden=(4,), l2: float = 1e-4, n_classes: int | None = None) -> NetworkPotential:
    """The default network potential of the studies: a tanh MLP, softmax cross-entropy + ``l2 |w|^2``,
    full batch, float64.

    X: (P, d) inputs; y: (P,) integer class labels; ``hidden``: widths of the hidden layers;
    ``n_classes``: outputs (default: ``max(y) + 1``).
    """
    X = torch.as_tensor(X, dtype=torch.float64)
    y = torch.as_tensor(y).long()
    if X.ndim != 2:
        raise ConfigError(f"X must be (P, d), got shape {tuple(X.shape)}")
    n_classes = int(n_classes or int(y.max()) + 1)
    model = mlp(X.shape[1], hidden, n_classes, activation="tanh")
    return NetworkPotential(Landscape(model, (X, y), loss="cross_entropy", dtype=torch.float64, l2=l2))
