"""The hinge problem of the jamming papers: stabilities, quadratic hinge loss, data and networks.

For a network f(x; theta) and labels y_mu = +-1 the *stability* of pattern mu is

    Delta_mu = kappa - y_mu f(x_mu; theta)          (margin kappa = 1 by default)

and the loss is the quadratic hinge L = (1/2P) sum_mu max(0, Delta_mu)^2. N_Delta = #{Delta_mu > 0}
counts the unsatisfied constraints (the "contacts" of jamming). With C > 1 outputs the labels are
+-1 one-hot vectors, Delta has shape (P, C) and the loss sums over outputs (the multi-class variant of
Geiger et al.).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..landscape import Landscape

__all__ = [
    "HingeProblem",
    "hinge_loss",
    "stabilities_from_outputs",
    "random_data",
    "fashion_pca_data",
    "network",
    "n_params",
    "square_network",
]


def stabilities_from_outputs(out: Tensor, Y: Tensor, kappa: float = 1.0) -> Tensor:
    """Delta = kappa - Y * f. ``out``: (P, C) or (P,) network outputs; ``Y``: same shape, entries +-1.

    One output (C = 1) gives Delta of shape (P,); several give (P, C).
    """
    if out.dim() == 2 and out.shape[-1] == 1:
        out = out.squeeze(-1)
    if out.shape != Y.shape:
        raise ConfigError(f"outputs {tuple(out.shape)} and labels {tuple(Y.shape)} have different shapes")
    return kappa - Y * out


def hinge_loss(delta: Tensor) -> Tensor:
    """L = (1/2P) sum max(0, Delta)^2 for Delta (P,) or (P, C) (summed over outputs). A 0-d tensor."""
    r = torch.relu(delta)
    return 0.5 * (r * r).sum() / delta.shape[0]


def _pm1_targets(y: Tensor, d_out: int, dtype: torch.dtype) -> Tensor:
    """Labels -> +-1 targets: (P,) +-1 floats or 0/1 ints for one output; class indices -> +-1 one-hot."""
    if d_out == 1:
        if y.dim() != 1:
            raise ConfigError(f"a single-output network needs labels of shape (P,), got {tuple(y.shape)}")
        if y.is_floating_point():
            if not bool(((y == 1) | (y == -1)).all()):
                raise ConfigError("binary labels must be +-1 (or integer 0/1)")
            return y.to(dtype)
        if not bool(((y == 0) | (y == 1)).all()):
            raise ConfigError("integer labels of a single-output network must be 0/1")
        return y.to(dtype) * 2 - 1
    if y.dim() == 2:
        if y.shape[1] != d_out or not bool(((y == 1) | (y == -1)).all()):
            raise ConfigError(f"(P, C) labels must be +-1 with C={d_out} columns, got {tuple(y.shape)}")
        return y.to(dtype)
    if y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= d_out:
        raise ConfigError(f"multi-class labels must be integers in [0, {d_out}), got {y.dtype}")
    return nn.functional.one_hot(y.long(), d_out).to(dtype) * 2 - 1


class HingeProblem:
    """The quadratic-hinge landscape of a network on a labelled data set, in float64 by default.

    Parameters
    ----------
    model : nn.Module
        Maps (P, d) inputs to (P, C) outputs (C = 1: binary task). It is copied.
    X : Tensor (P, d)
        Inputs.
    y : Tensor
        (P,) +-1 labels (or 0/1 integers) for one output; (P,) class indices or (P, C) +-1 one-hot for C
        outputs.
    kappa : float
        Margin (1 in the papers).
    dtype, device, chunk
        As for :class:`~flatminima.Landscape` (which this class wraps: ``.landscape`` gives HVPs, dense
        Hessians and ``to_model``).

    Notes
    -----
    The fast path :meth:`loss_and_grad` uses one reverse pass per chunk of data.
    """

    def __init__(
        self,
        model: nn.Module,
        X: Tensor,
        y: Tensor,
        kappa: float = 1.0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        chunk: int | None = None,
    ) -> None:
        if not math.isfinite(kappa):
            raise ConfigError(f"kappa must be finite, got {kappa}")
        X = torch.as_tensor(X)
        y = torch.as_tensor(y)
        if X.dim() < 2 or X.shape[0] != y.shape[0]:
            raise ConfigError(f"X must be (P, d) with as many rows as y; got {tuple(X.shape)} and {tuple(y.shape)}")
        with torch.no_grad():
            probe = _out_dim(model, X[:1])
        self.d_out = probe
        self.Y = _pm1_targets(y, probe, dtype)
        self.kappa = float(kappa)
        k = self.kappa

        def per_example(out: Tensor, Y: Tensor) -> Tensor:
            r = torch.relu(stabilities_from_outputs(out, Y, k))
            return 0.5 * (r * r).reshape(r.shape[0], -1).sum(-1)

        per_example.__name__ = "hinge2"
        self.landscape = Landscape(model, (X, self.Y), loss=per_example, dtype=dtype, device=device, chunk=chunk)
        self.X = self.landscape.X
        self.Y = self.landscape.y
        self.P = self.landscape.n_examples
        self.N = self.landscape.n_params
        self.dtype = dtype
        self.device = self.landscape.device

    # ------------------------------------------------------------------ evaluation
    def _chunks(self):
        c = self.landscape.chunk
        for i in range(0, self.P, c):
            yield self.X[i : i + c], self.Y[i : i + c]

    def outputs(self, theta: Tensor) -> Tensor:
        """Network outputs (P,) for one output, (P, C) otherwise."""
        out = self.landscape.outputs(theta)
        return out.squeeze(-1) if out.dim() == 2 and out.shape[-1] == 1 else out

    def stabilities(self, theta: Tensor, kappa: float | None = None) -> Tensor:
        """Delta (P,) or (P, C) at theta (margin ``kappa``, default the problem's)."""
        return stabilities_from_outputs(self.outputs(theta), self.Y, self.kappa if kappa is None else kappa)

    def loss(self, theta: Tensor, kappa: float | None = None) -> float:
        return float(hinge_loss(self.stabilities(theta, kappa)))

    def loss_and_grad(self, theta: Tensor, kappa: float | None = None) -> tuple[Tensor, Tensor]:
        """(L, grad L): a 0-d tensor and an (N,) tensor (reverse mode, chunked over the data)."""
        k = self.kappa if kappa is None else float(kappa)
        th = theta.detach().to(self.device, self.dtype).requires_grad_(True)
        g = torch.zeros_like(th)
        f = torch.zeros((), dtype=self.dtype, device=self.device)
        for x, Y in self._chunks():
            r = torch.relu(stabilities_from_outputs(self.landscape.forward(th, x), Y, k))
            part = 0.5 * (r * r).sum() / self.P
            (gc,) = torch.autograd.grad(part, th)
            g += gc
            f += part.detach()
        return f, g

    def n_delta(self, theta: Tensor, kappa: float | None = None) -> int:
        """N_Delta: the number of unsatisfied constraints Delta > 0 (counted over outputs if C > 1)."""
        return int((self.stabilities(theta, kappa) > 0).sum())

    def train_errors(self, theta: Tensor) -> int:
        """Misclassified training patterns: y f <= 0 for one output, wrong argmax for several."""
        out = self.outputs(theta)
        if out.dim() == 1:
            return int((self.Y * out <= 0).sum())
        return int((out.argmax(-1) != self.Y.argmax(-1)).sum())

    def summary(self, theta: Tensor) -> dict[str, float | int]:
        """Loss, N_Delta, train errors and gradient norm at theta (plain Python numbers)."""
        f, g = self.loss_and_grad(theta)
        delta = self.stabilities(theta)
        return {
            "loss": float(f), "grad_norm": float(g.norm()), "n_delta": int((delta > 0).sum()),
            "train_errors": self.train_errors(theta), "P": self.P, "N": self.N,
        }

    def jacobian(self, theta: Tensor) -> Tensor:
        """d f(x_mu) / d theta, shape (P * C, N) (rows ordered pattern-major): per-example reverse mode,
        vmapped over the examples of each chunk."""
        from torch.func import jacrev, vmap

        th = theta.detach().to(self.device, self.dtype)

        def one(t: Tensor, x: Tensor) -> Tensor:
            return self.landscape.forward(t, x.unsqueeze(0)).reshape(-1)

        per = vmap(jacrev(one), in_dims=(None, 0))
        return torch.cat([per(th, x).reshape(-1, self.N) for x, _ in self._chunks()])

    def effective_params(self, theta: Tensor, rtol: float | None = None) -> int:
        """N_eff: numerical rank of the output Jacobian (P*C, N) at theta (symmetries and dead units removed).

        Singular values below ``rtol * s_max`` (default ``max(P*C, N) * eps``) count as zero.
        """
        J = self.jacobian(theta)
        s = torch.linalg.svdvals(J)
        if s.numel() == 0 or float(s[0]) == 0.0:
            return 0
        tol = (max(J.shape) * torch.finfo(J.dtype).eps) if rtol is None else rtol
        return int((s > tol * s[0]).sum())

    def __repr__(self) -> str:
        return f"HingeProblem(P={self.P}, N={self.N}, C={self.d_out}, kappa={self.kappa}, dtype={self.dtype})"


def _out_dim(model: nn.Module, x: Tensor) -> int:
    """Number of outputs of ``model`` (runs it on one example, in its own dtype)."""
    p = next(model.parameters(), None)
    xx = x.to(p.dtype if p is not None else torch.float32)
    if p is not None:
        xx = xx.to(p.device)
    was = model.training
    model.eval()
    try:
        out = model(xx)
    finally:
        model.train(was)
    return 1 if out.dim() == 1 else int(out.shape[-1])


# ---------------------------------------------------------------------- data and networks
def _sphere(X: Tensor) -> Tensor:
    """Centre on the mean of the given points, then rescale every point to norm sqrt(d)."""
    X = X - X.mean(0, keepdim=True)
    d = X.shape[1]
    return X * (math.sqrt(d) / X.norm(dim=1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny))


def random_data(P: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Random Gaussian inputs with random +-1 labels, centred and rescaled to norm sqrt(d).

    Returns ``(X (P, d), y (P,))``; the same seed gives the same data.
    """
    from ..data import random_patterns

    X, y = random_patterns(P, d, seed=seed, dtype=dtype)
    return _sphere(X), y


def fashion_pca_data(
    P: int,
    d: int = 10,
    seed: int = 0,
    positive: Sequence[int] = (0, 2, 4, 6, 8),
    P_test: int = 0,
    data_dir: str | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fashion-MNIST reduced by PCA to d whitened components, with +-1 labels from two class groups.

    ``positive``: the classes labelled +1 (default the even class indices, the analogue of the digit
    parity of the MNIST experiments). A class-balanced subset of P training points (seeded; every prefix
    balanced) is centred on its own mean and every input rescaled to norm sqrt(d); the test points (the
    first ``P_test`` of a balanced draw of the test split) get the same centring. Returns
    ``(X (P, d), y (P,), X_test (P_test, d), y_test (P_test,))``.
    """
    from ..data import balanced_subset, binary_labels, flatten, load, pca

    ds = flatten(load("fashion-mnist", data_dir=data_dir))
    ds = pca(ds, d, whiten=True)
    sub = balanced_subset(ds, P, seed=seed)  # balanced over the 10 classes, before merging them
    if P_test:
        sub = balanced_subset(sub, P_test, seed=seed, split="test")
    sub = binary_labels(sub, positive)
    Xtr = sub.X_train.to(dtype)
    mu = Xtr.mean(0, keepdim=True)
    r = math.sqrt(d)

    def scale(X: Tensor) -> Tensor:
        X = X - mu
        return X * (r / X.norm(dim=1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny))

    Xte = sub.X_test.to(dtype)[:P_test] if P_test else torch.empty(0, d, dtype=dtype)
    yte = sub.y_test.to(dtype)[:P_test] if P_test else torch.empty(0, dtype=dtype)
    return scale(Xtr), sub.y_train.to(dtype), (scale(Xte) if P_test else Xte), yte


def n_params(model: nn.Module, count: str = "weights") -> int:
    """Parameter count of an MLP as the papers count it: ``"weights"`` (biases excluded), ``"all"`` or
    ``"relu"`` (weights minus one per hidden neuron, the homogeneity correction)."""
    from ..models.mlp import count_params

    if not hasattr(model, "widths"):
        if count != "all":
            raise ConfigError("only 'all' parameters can be counted for a model that is not a flatminima MLP")
        return sum(p.numel() for p in model.parameters())
    return count_params(model.d_in, model.widths, model.d_out, count)


def network(
    N: int,
    d: int,
    depth: int,
    activation: str = "relu",
    seed: int = 0,
    d_out: int = 1,
    count: str = "weights",
    init: str = "orthogonal",
    dtype: torch.dtype = torch.float64,
) -> nn.Module:
    """A depth-``depth`` fully-connected network with the largest parameter count <= N (fractional widths).

    ``count`` says what N counts (``"weights"`` as the papers, ``"all"``, ``"relu"``); ``init`` is
    ``"orthogonal"`` (the papers' default; biases zero), ``"normal"`` (std 1/sqrt(fan_in)) or
    ``"default"`` (PyTorch's). The initialisation is seeded without touching the global RNG.
    """
    from ..models.mlp import mlp_for_params

    if depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = mlp_for_params(int(N), d, depth, d_out=d_out, activation=activation, count=count, init=init)
    return model.to(dtype)


def square_network(h: int, depth: int, seed: int = 0, activation: str = "relu", init: str = "orthogonal",
                   dtype: torch.dtype = torch.float64) -> nn.Module:
    """The square network of the jamming papers' runs (``--dim h --width h``): input dimension h, ``depth``
    hidden layers of width h, one output, biases (zero at initialisation). N = depth h^2 + h weights (biases
    excluded, as the papers count). The initialisation is seeded without touching the global RNG."""
    from ..models.mlp import MLP

    if isinstance(h, bool) or not isinstance(h, int) or h < 1 or depth < 1:
        raise ConfigError(f"a square network needs a width h >= 1 and depth >= 1, got h={h!r}, depth={depth!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = MLP(h, [h] * depth, 1, activation, True, init)
    return model.to(dtype)
