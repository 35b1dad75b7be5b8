"""The loss landscape of a (model, data, loss) triple as a function of one flat parameter vector.

Everything in flatminima works on this object: optimizers walk on it, measures look at it, the
explorer maps it. It is functional: every method takes the flat parameter vector ``theta`` (shape
``(N,)``) explicitly and never mutates the model it was built from.

Example
-------
>>> import torch, flatminima
>>> X, y = torch.randn(100, 5), torch.randint(0, 3, (100,))
>>> model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> land = flatminima.Landscape(model, (X, y), dtype=torch.float64)
>>> theta = land.theta                        # (N,) = (75,)
>>> f, g = land.loss_and_grad(theta)          # scalar, (N,)
>>> Hv = land.hvp(theta, torch.ones_like(theta))
>>> losses = land.batched_loss(theta + 0.01 * torch.randn(16, land.n_params, dtype=torch.float64))
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

from .errors import ConfigError
from .forward import BatchedForward
from .linalg import to_dense

__all__ = ["Landscape", "HessianOperator", "LOSSES", "per_example_loss", "predictions_error"]

#: Default number of examples processed in one pass (bounds memory on the full training set).
DEFAULT_CHUNK = 8192
#: Default budget of (parameter vectors x examples) in one vmapped pass of ``batched_loss``.
DEFAULT_BATCH_BUDGET = 1 << 17
#: Largest activation tensor (copies x examples x width elements) of one batched pass of a Linear chain.
CHAIN_PASS_ELEMENTS = 1 << 20
#: Default bytes of gradient graphs kept by :meth:`Landscape.hvp_operator` (chunks beyond are recomputed).
DEFAULT_RETAIN_BYTES = 1 << 30
#: Temporaries (elements) of one vmapped backward pass over a block of vectors (:class:`HessianOperator`).
RETAIN_BLOCK_ELEMENTS = 1 << 18


def _storage_key(t: Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def _squeeze_scalar_output(out: Tensor) -> Tensor:
    return out.squeeze(-1) if out.dim() >= 2 and out.shape[-1] == 1 else out


def _pm1(y: Tensor, dtype: torch.dtype) -> Tensor:
    """Binary labels as +-1 floats: +-1 labels pass through, integer 0/1 labels are mapped to -1/+1."""
    return y.to(dtype) if y.is_floating_point() else y.to(dtype) * 2 - 1


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    if out.dim() == 1 or out.shape[-1] == 1:  # one logit, binary labels: logistic loss
        return nn.functional.softplus(-_pm1(y, out.dtype) * _squeeze_scalar_output(out))
    # logsumexp - target logit: the same value as F.cross_entropy, cheaper on a CPU for few classes.
    # Sequences (B, T, V) with targets (B, T) give the mean over the T positions of each example.
    per = torch.logsumexp(out, dim=-1) - out.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return per.mean(-1) if per.dim() > 1 else per


def _mse(out: Tensor, y: Tensor) -> Tensor:
    if out.dim() >= 2 and out.shape[-1] > 1 and y.dim() == 1:  # class labels: one-hot targets
        y = nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)
    out = _squeeze_scalar_output(out)
    diff = out - y.to(out.dtype)
    return 0.5 * (diff * diff).reshape(diff.shape[0], -1).sum(-1)


def _hinge2(out: Tensor, y: Tensor) -> Tensor:
    """Quadratic hinge 1/2 max(0, 1 - y f)^2 (scalar output, labels +-1)."""
    delta = 1.0 - _pm1(y, out.dtype) * _squeeze_scalar_output(out)
    return 0.5 * torch.relu(delta) ** 2


#: Per-example losses, ``loss(outputs (B, ...), targets (B, ...)) -> (B,)``.
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,
    "hinge2": _hinge2,
}


def per_example_loss(name_or_fn: str | Callable[[Tensor, Tensor], Tensor]) -> Callable:
    """Resolve a loss name (``"cross_entropy"``, ``"mse"``, ``"hinge2"``) or pass a callable through."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return LOSSES[name_or_fn]
    except KeyError:
        raise ConfigError(f"unknown loss {name_or_fn!r}; choose one of {sorted(LOSSES)} or pass a callable") from None


def predictions_error(out: Tensor, y: Tensor) -> Tensor:
    """Per-example 0/1 error: argmax for several outputs, sign for one output with labels +-1.

    out: (B, C) or (B,) or (B, 1); y: (B,). Returns a float tensor (B,). Sequences (B, T, C) with
    targets (B, T) give the fraction of wrong positions of each example.
    """
    if out.dim() >= 2 and out.shape[-1] > 1:
        wrong = (out.argmax(-1) != y).to(out.dtype)
        return wrong.mean(-1) if wrong.dim() > 1 else wrong  # sequences: fraction of wrong positions
    f = _squeeze_scalar_output(out)
    return (f * _pm1(y, f.dtype) <= 0).to(f.dtype)


def _as_xy(data: Any) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = data
    elif hasattr(data, "X_train") and hasattr(data, "y_train"):
        X, y = data.X_train, data.y_train
    else:
        raise ConfigError("data must be a flatminima Dataset or a tuple (X, y) of tensors")
    X = torch.as_tensor(X)
    y = torch.as_tensor(y)
    if X.shape[0] != y.shape[0]:
        raise ConfigError(f"X has {X.shape[0]} examples but y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise ConfigError("the data set is empty")
    return X, y


class HessianOperator:
    """The Hessian H(theta) of a :class:`Landscape` at a fixed theta, as a symmetric linear operator on R^M.

    Built by :meth:`Landscape.hvp_operator` (M = N) or by :meth:`restrict` (a diagonal block). ``op(v)``
    is ``matvec`` for v (M,) and ``matmat`` for V (K, M); every product is exact up to round-off.

    Attributes
    ----------
    shape : (M, M)
    dtype, device : those of the landscape.
    gradient : Tensor (M,) or None
        grad f(theta), where the set-up computed it anyway (every data chunk kept), else None.
    kept_bytes : int
        Bytes of the gradient graphs kept between products.
    recomputed_chunks : int
        Data chunks recomputed forward-over-reverse at every product (beyond the memory budget).
    n_products : int
        Hessian-vector products computed so far.
    """

    def __init__(self, products: Callable[[Tensor, bool], Tensor], dim: int, dtype: torch.dtype,
                 device: torch.device, gradient: Tensor | None, kept_bytes: int, recomputed_chunks: int) -> None:
        self._products = products  # (V, batched) -> H v for v (M,), or the rows H v_k for V (K, M)
        self.shape = (dim, dim)
        self.dtype, self.device = dtype, device
        self.gradient = gradient
        self.kept_bytes, self.recomputed_chunks = int(kept_bytes), int(recomputed_chunks)
        self.n_products = 0
        # K vectors: sub-blocks through one vmapped backward pass each (cheaper per vector than a loop on
        # small networks), sized so that their temporaries stay near RETAIN_BLOCK_ELEMENTS; large networks
        # (one product's saved tensors above that) loop over the vectors
        self._k_sub = max(1, RETAIN_BLOCK_ELEMENTS // max(1, self.kept_bytes // dtype.itemsize))

    def _check(self, v: Tensor, batched: bool) -> Tensor:
        v = torch.as_tensor(v).to(self.device, self.dtype).detach()
        if v.dim() != (2 if batched else 1) or v.shape[-1] != self.shape[0]:
            want = f"(K, {self.shape[0]})" if batched else f"({self.shape[0]},)"
            raise ConfigError(f"v must have shape {want}, got {tuple(v.shape)}")
        return v

    def matvec(self, v: Tensor) -> Tensor:
        """H v for v (M,): (M,)."""
        v = self._check(v, batched=False)
        self.n_products += 1
        return self._products(v, False)

    def matmat(self, V: Tensor) -> Tensor:
        """H v_k for the K rows of V (K, M): (K, M)."""
        V = self._check(V, batched=True)
        self.n_products += V.shape[0]
        if V.shape[0] == 0:
            return V.clone()
        if self._k_sub > 1:
            try:
                return torch.cat([self._products(V[i : i + self._k_sub], True)
                                  for i in range(0, V.shape[0], self._k_sub)])
            except RuntimeError:  # an operation without a batching rule for its double backward
                self._k_sub = 1
        return torch.stack([self._products(v, False) for v in V])

    def __call__(self, v: Tensor) -> Tensor:
        """``matmat`` for a (K, M) input, else ``matvec``."""
        return self.matmat(v) if torch.as_tensor(v).dim() == 2 else self.matvec(v)

    def restrict(self, idx: Tensor) -> HessianOperator:
        """The diagonal block H[idx, idx] (M' = len(idx)) as an operator sharing this one's set-up."""
        idx = torch.as_tensor(idx, device=self.device).reshape(-1).long()
        n = self.shape[0]

        def products(V: Tensor, batched: bool) -> Tensor:
            full = V.new_zeros(*V.shape[:-1], n)
            full[..., idx] = V
            return self._products(full, batched)[..., idx]

        return HessianOperator(products, int(idx.numel()), self.dtype, self.device,
                               None if self.gradient is None else self.gradient[idx], self.kept_bytes,
                               self.recomputed_chunks)


class Landscape:
    """Loss ``f(theta) = mean_mu loss(model(x_mu; theta), y_mu) + l2 * |theta|^2`` over a data set.

    Parameters
    ----------
    model : nn.Module
        The network. It is copied; the copy is put in evaluation mode, so BatchNorm uses its running
        statistics and dropout is off (the landscape is a deterministic function of ``theta``).
    data : Dataset or tuple (X, y)
        ``X``: (P, ...) inputs, ``y``: (P,) class labels, +-1 labels or (P, k) regression targets.
        A flatminima :class:`~flatminima.data.Dataset` contributes its training split.
    loss : str or callable
        ``"cross_entropy"`` (softmax CE; logistic loss for one output and +-1 labels), ``"mse"``,
        ``"hinge2"`` (quadratic hinge), or ``fn(outputs, targets) -> (B,)`` per-example losses.
    dtype : torch.dtype, optional
        float32 or float64 for parameters and inputs (default: the model's dtype).
    device : str or torch.device, optional
        Where the parameters and data live (default: the model's device).
    chunk : int, optional
        Examples per pass (default 8192): memory stays bounded for any data set size.
    l2 : float
        Coefficient of the ``l2 * |theta|^2`` regulariser (0 by default).

    Attributes
    ----------
    theta : Tensor (N,)
        The model's parameters, flattened in ``model.named_parameters()`` order (a fresh copy).
    n_params : int
        N, the number of trainable parameters.
    names, shapes : lists
        Names and shapes of the parameter tensors that make up ``theta``.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        chunk: int | None = None,
        l2: float = 0.0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters")
        if dtype is None:
            dtype = params[0][1].dtype
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if device is None:
            device = params[0][1].device
        if chunk is not None and chunk < 1:
            raise ConfigError(f"chunk must be a positive number of examples, got {chunk}")
        if l2 < 0:
            raise ConfigError(f"l2 must be >= 0, got {l2}")
        self.dtype = dtype
        self.device = torch.device(device)
        self.chunk = int(chunk or DEFAULT_CHUNK)
        self.l2 = float(l2)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self._loss_fn = per_example_loss(loss)

        self.model = copy.deepcopy(model).to(device=self.device, dtype=dtype).eval()
        self.names = [n for n, _ in params]
        own = dict(self.model.named_parameters())
        self.shapes = [tuple(own[n].shape) for n in self.names]
        self.numels = [own[n].numel() for n in self.names]
        self.n_params = int(sum(self.numels))
        self.buffers = {n: b for n, b in self.model.named_buffers()}
        #: K parameter vectors (K, N) through the model in one pass (same flat layout as ``theta``)
        self.batched_forward = BatchedForward(self.model, self.names)
        self.theta = torch.cat([own[n].detach().reshape(-1) for n in self.names]).clone()

        X, y = _as_xy(data)
        self.X = X.to(self.device, dtype=dtype) if X.is_floating_point() else X.to(self.device)
        self.y = y.to(self.device, dtype=dtype) if y.is_floating_point() else y.to(self.device)
        self.n_examples = int(self.X.shape[0])

    @property
    def loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The per-example loss ``loss_fn(outputs (B, ...), targets (B, ...)) -> (B,)``."""
        return self._loss_fn

    # ------------------------------------------------------------------ parameters <-> module
    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Split a flat vector (N,) into ``{name: tensor}`` views with the parameters' shapes."""
        parts = torch.split(theta, self.numels)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def flatten(self, tensors: dict[str, Tensor] | Sequence[Tensor]) -> Tensor:
        """Inverse of :meth:`unflatten`: a dict by name (or a list in order) to a flat (N,) vector."""
        if isinstance(tensors, dict):
            tensors = [tensors[n] for n in self.names]
        return torch.cat([t.reshape(-1) for t in tensors])

    def _check_theta(self, theta: Tensor, batched: bool = False) -> Tensor:
        theta = torch.as_tensor(theta)
        want = 2 if batched else 1
        if theta.dim() != want or theta.shape[-1] != self.n_params:
            shape = "(K, N)" if batched else "(N,)"
            raise ConfigError(f"theta must have shape {shape} with N={self.n_params}, got {tuple(theta.shape)}")
        return theta.to(self.device, self.dtype)

    def to_model(self, theta: Tensor) -> nn.Module:
        """A new module (copy of the model, eval mode) whose parameters are ``theta`` (N,)."""
        theta = self._check_theta(theta)
        m = copy.deepcopy(self.model)
        own = dict(m.named_parameters())
        with torch.no_grad():
            for name, t in self.unflatten(theta).items():
                own[name].copy_(t)
        return m

    # ------------------------------------------------------------------ functional pieces
    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """Model outputs for inputs x (B, ...) at parameters theta (N,), as a torch.func-traceable function
        (no checks, no chunking: the building block for vmap / jacrev / jvp over theta)."""
        return self._forward(theta, x)

    def _forward(self, theta: Tensor, x: Tensor) -> Tensor:
        # frozen parameters (requires_grad=False) and buffers: the model's own, never modified
        return functional_call(self.model, self.unflatten(theta), (x,))

    def _chunk_sum(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Sum of per-example losses over one chunk (data term only)."""
        return self._loss_fn(self._forward(theta, x), y).sum()

    def _chunks(self, size: int | None = None):
        size = size or self.chunk
        for i in range(0, self.n_examples, size):
            yield self.X[i : i + size], self.y[i : i + size]

    def _reg(self, theta: Tensor) -> Tensor:
        return self.l2 * (theta * theta).sum()

    # ------------------------------------------------------------------ public API
    def loss(self, theta: Tensor) -> Tensor:
        """f(theta), a 0-d tensor. theta: (N,)."""
        theta = self._check_theta(theta)
        with torch.no_grad():
            total = sum(self._chunk_sum(theta, x, y) for x, y in self._chunks())
            return total / self.n_examples + self._reg(theta)

    def loss_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(f(theta), grad f(theta)): a 0-d tensor and an (N,) tensor."""
        return self._mean_value_and_grad(grad_and_value(self._chunk_sum), self._check_theta(theta))

    def _mean_value_and_grad(self, gv: Callable, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Sum ``gv(theta, x, y) -> (grad, value)`` over the data chunks, divide by P, add the regulariser.

        theta: (N,) or (K, N), with ``gv`` vmapped over K in the second case.
        """
        g = torch.zeros_like(theta)
        f = theta.new_zeros(theta.shape[:-1])
        for x, y in self._chunks():
            gc, fc = gv(theta, x, y)
            g += gc
            f += fc.detach()
        g /= self.n_examples
        f /= self.n_examples
        if self.l2:
            g += 2.0 * self.l2 * theta
            f += self.l2 * (theta * theta).sum(-1)
        return f, g

    def grad(self, theta: Tensor) -> Tensor:
        """grad f(theta), shape (N,)."""
        return self.loss_and_grad(theta)[1]

    def hvp(self, theta: Tensor, v: Tensor) -> Tensor:
        """Exact Hessian-vector product H(theta) v, forward-over-reverse (jvp of grad). Shapes (N,), (N,).

        ``v`` may also be (K, N): K products in one vmapped pass, returned as (K, N).
        """
        theta = self._check_theta(theta)
        v = torch.as_tensor(v).to(self.device, self.dtype)
        if v.dim() == 2:
            return vmap(lambda u: self.hvp(theta, u))(v) if v.shape[0] else v.clone()
        if v.shape != theta.shape:
            raise ConfigError(f"v must have shape {tuple(theta.shape)}, got {tuple(v.shape)}")
        return self._finish_hvp(self._hvp_sum(theta, v, self._chunks()), v)

    def hvp_operator(self, theta: Tensor, memory: int | None = None) -> HessianOperator:
        """H(theta) as a :class:`HessianOperator` for many exact products at one point (Lanczos, traces,
        densities): ``op(v)`` for v (N,) or (K, N).

        Reverse-over-reverse, the way PyHessian does it: at construction each data chunk's gradient is
        computed once with ``create_graph=True`` and its graph kept; a product is one backward pass through
        the kept graphs, which skips the forward pass a fresh forward-over-reverse product (:meth:`hvp`)
        redoes every time. The graphs hold about the activation memory of one training step on the whole
        data set. They are counted (the bytes of the tensors autograd saves, through
        :func:`torch.autograd.graph.saved_tensors_hooks`) and chunks beyond ``memory`` bytes (default
        1 GiB) are not kept but recomputed by a fresh forward-over-reverse product each time, so memory
        stays bounded on any data set; ``memory=0`` keeps nothing (every product forward-over-reverse).
        """
        theta = self._check_theta(theta)
        if memory is not None and memory < 0:
            raise ConfigError(f"memory must be a number of bytes >= 0, got {memory}")
        budget = DEFAULT_RETAIN_BYTES if memory is None else int(memory)
        t = theta.detach().clone().requires_grad_(True)
        own = [self.X, self.y, t, *self.buffers.values(), *self.model.parameters()]
        seen = {_storage_key(a) for a in own}
        G: Tensor | None = None
        gsum = torch.zeros_like(theta)  # the gradient of the kept chunks, a by-product
        fresh: list[tuple[Tensor, Tensor]] = []
        kept, full = 0, budget <= 0
        for x, y in self._chunks():
            if not full:
                size = 0

                def pack(u: Tensor) -> Tensor:  # count each new storage that autograd saves, once
                    nonlocal size
                    if u.layout == torch.strided and _storage_key(u) not in seen:
                        seen.add(_storage_key(u))
                        size += u.untyped_storage().nbytes()
                    return u

                with torch.enable_grad():
                    with torch.autograd.graph.saved_tensors_hooks(pack, lambda u: u):
                        g = torch.autograd.grad(self._chunk_sum(t, x, y), t, create_graph=True)[0]
                    gsum += g.detach()
                    if not g.requires_grad:  # the gradient does not depend on theta: no curvature here
                        continue
                    if kept + size <= budget:
                        kept += size
                        G = g if G is None else G + g
                        continue
                full = True  # budget spent: this chunk and the following ones are recomputed at every product
                del g
            fresh.append((x, y))

        def products(V: Tensor, batched: bool) -> Tensor:
            """H v for v (N,) (batched=False) or H V^T for V (k, N), divided by P, with the regulariser."""
            if G is not None:
                with torch.enable_grad():
                    out = torch.autograd.grad(G, t, V, retain_graph=True, is_grads_batched=batched)[0]
            else:
                out = torch.zeros_like(V)
            if fresh:
                f = lambda u: self._hvp_sum(theta, u, fresh)  # noqa: E731
                out = out + (vmap(f)(V) if batched else f(V))
            return self._finish_hvp(out, V)

        # the gradient at theta came with the kept graphs when every chunk was kept
        gradient = None if fresh else self._finish_grad(gsum, theta)
        return HessianOperator(products, self.n_params, self.dtype, self.device, gradient, kept, len(fresh))

    def _finish_grad(self, total: Tensor, theta: Tensor) -> Tensor:
        g = total / self.n_examples
        return g + 2.0 * self.l2 * theta if self.l2 else g

    def _finish_hvp(self, out: Tensor, v: Tensor) -> Tensor:
        out = out / self.n_examples
        return out + 2.0 * self.l2 * v if self.l2 else out

    def _hvp_sum(self, theta: Tensor, v: Tensor, chunks) -> Tensor:
        """Forward-over-reverse sum over ``chunks`` of H_chunk v (not divided by P), no regulariser."""
        g = grad(self._chunk_sum)
        out = torch.zeros_like(theta)
        for x, y in chunks:
            out = out + jvp(lambda t: g(t, x, y), (theta,), (v,))[1]
        return out

    def batched_loss_and_grad(self, thetas: Tensor) -> tuple[Tensor, Tensor]:
        """f and grad f at K parameter vectors in batched passes: (K, N) -> ((K,), (K, N))."""

        def value_and_grad(th: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                t = th.detach().requires_grad_(True)
                per = self._per_copy_sums(t, x, y, self._loss_fn)
                return torch.autograd.grad(per.sum(), t)[0], per.detach()

        return self._mean_value_and_grad(value_and_grad, self._check_theta(thetas, batched=True))

    def batched_loss(self, thetas: Tensor, budget: int | None = None) -> Tensor:
        """f at K parameter vectors in batched passes. thetas: (K, N) -> (K,).

        ``budget`` bounds (vectors x examples) per pass (default 131072); the K vectors and the data are
        split accordingly.
        """
        return self._batched(thetas, self._loss_fn, budget, add_reg=True)

    def batched_error(self, thetas: Tensor, budget: int | None = None) -> Tensor:
        """Training error (fraction of misclassified examples) at K vectors. (K, N) -> (K,)."""
        return self._batched(thetas, predictions_error, budget, add_reg=False)

    def _per_copy_sums(self, thetas: Tensor, x: Tensor, y: Tensor, fn: Callable) -> Tensor:
        """Sum over the examples x (B, ...) of ``fn(outputs, y)`` for each of K vectors thetas: (K,)."""
        out = self.batched_forward(thetas, x)  # (K, B, ...)
        K, B = out.shape[:2]
        return fn(out.reshape(K * B, *out.shape[2:]), y.repeat(K, *([1] * (y.dim() - 1)))).view(K, B).sum(1)

    def _batched(self, thetas: Tensor, fn: Callable, budget: int | None, add_reg: bool) -> Tensor:
        thetas = self._check_theta(thetas, batched=True)
        K = thetas.shape[0]
        budget = int(budget or DEFAULT_BATCH_BUDGET)
        if self.batched_forward.chain is not None:
            # activations (copies x examples x width) stay below CHAIN_PASS_ELEMENTS: large temporaries are
            # slow to allocate (page faults) and leave the caches
            budget = max(1, min(budget, CHAIN_PASS_ELEMENTS // self.batched_forward.width))
        k_step = max(1, min(K, budget // min(self.n_examples, self.chunk)))
        d_step = max(1, min(self.chunk, budget // k_step))
        out = torch.empty(K, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for k in range(0, K, k_step):
                th = thetas[k : k + k_step]
                out[k : k + k_step] = sum(self._per_copy_sums(th, x, y, fn)
                                          for x, y in self._chunks(d_step)) / self.n_examples
        if add_reg and self.l2:
            out += self.l2 * (thetas * thetas).sum(-1)
        return out

    def outputs(self, theta: Tensor, X: Tensor | None = None) -> Tensor:
        """Network outputs for every example, (P, ...) (on the landscape's data unless X is given)."""
        theta = self._check_theta(theta)
        X = self.X if X is None else torch.as_tensor(X).to(self.device, self.dtype)
        with torch.no_grad():
            return torch.cat([self._forward(theta, X[i : i + self.chunk]) for i in range(0, X.shape[0], self.chunk)])

    def per_example_losses(self, theta: Tensor) -> Tensor:
        """Loss of each example (P,), without the regulariser."""
        return self._loss_fn(self.outputs(theta), self.y)

    def error(self, theta: Tensor, X: Tensor | None = None, y: Tensor | None = None) -> float:
        """Fraction of misclassified examples (training data unless X, y are given)."""
        out = self.outputs(theta, X)
        y = self.y if y is None else torch.as_tensor(y).to(self.device)
        return float(predictions_error(out, y).mean())

    def with_data(self, data: Any) -> Landscape:
        """The same model, loss and precision on other data (for example the test split)."""
        if hasattr(data, "X_test") and not isinstance(data, (tuple, list)):
            data = (data.X_test, data.y_test)
        new = copy.copy(self)
        X, y = _as_xy(data)
        new.X = X.to(self.device, dtype=self.dtype) if X.is_floating_point() else X.to(self.device)
        new.y = y.to(self.device, dtype=self.dtype) if y.is_floating_point() else y.to(self.device)
        new.n_examples = int(new.X.shape[0])
        return new

    def dense_hessian(self, theta: Tensor) -> Tensor:
        """The full (N, N) Hessian, from N products in vmapped blocks, symmetrised (small N only)."""
        return to_dense(self.hvp_operator(theta))

    def __repr__(self) -> str:
        return (
            f"Landscape(model={type(self.model).__name__}, N={self.n_params}, P={self.n_examples}, "
            f"loss={self.loss_name!r}, dtype={self.dtype}, device={self.device})"
        )

