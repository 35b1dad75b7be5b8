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
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

from .errors import ConfigError

__all__ = ["Landscape", "LOSSES", "per_example_loss", "predictions_error"]

#: Default number of examples processed in one pass (bounds memory on the full training set).
DEFAULT_CHUNK = 8192
#: Default budget of (parameter vectors x examples) in one vmapped pass of ``batched_loss``.
DEFAULT_BATCH_BUDGET = 1 << 17
#: Largest activation tensor (copies x examples x width elements) of one batched pass of a Linear chain.
CHAIN_PASS_ELEMENTS = 1 << 20
#: Default bytes of gradient graphs kept by ``hvp_operator(method="retained")`` (chunks beyond are recomputed).
DEFAULT_RETAIN_BYTES = 1 << 30
#: Temporaries (elements) of one vmapped backward pass over a block of vectors (retained HVPs).
RETAIN_BLOCK_ELEMENTS = 1 << 18
#: Methods of :meth:`Landscape.hvp_operator`.
HVP_METHODS = ("retained", "jvp", "linearize")


def _storage_key(t: Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def _graph_bytes(fn: Any, seen: set) -> int:
    """Bytes of the tensors saved by the autograd graph under node ``fn`` whose storages are not in ``seen``
    (each storage counted once; ``seen`` is updated)."""
    total, stack, visited = 0, [fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                val = getattr(node, name)
            except RuntimeError:  # freed buffers
                continue
            for u in val if isinstance(val, (tuple, list)) else (val,):
                if isinstance(u, Tensor) and u.layout == torch.strided:
                    key = _storage_key(u)
                    if key not in seen:
                        seen.add(key)
                        total += u.untyped_storage().nbytes()
        stack.extend(f for f, _ in node.next_functions)
    return total


#: Modules applied elementwise (allowed between the Linear layers of a chain, see Landscape.linear_chain).
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.ELU, nn.CELU, nn.SELU,
               nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.Identity, nn.Dropout)


def _is_elementwise(m: nn.Module) -> bool:
    if getattr(m, "inplace", False):  # would write into the inputs
        return False
    if type(m) in ELEMENTWISE:
        return True
    return type(m).__name__ == "Erf" and type(m).__module__ == "flatminima.models.mlp"


def _parse_chain(model: nn.Module) -> list[tuple[str, Any, Any]] | None:
    steps: list[tuple[str, Any, Any]] = []
    seen: set[int] = set()

    def walk(mod: nn.Module, prefix: str) -> bool:
        if mod._forward_hooks or mod._forward_pre_hooks:
            return False
        if isinstance(mod, nn.Sequential) and type(mod).forward is nn.Sequential.forward:
            # _modules, not named_children(): a module used twice must be seen twice
            return all(walk(child, f"{prefix}{name}.") for name, child in mod._modules.items() if child is not None)
        if type(mod) is nn.Linear:
            if id(mod) in seen:  # shared weights: not a chain of independent layers
                return False
            seen.add(id(mod))
            steps.append(("linear", prefix + "weight", prefix + "bias" if mod.bias is not None else None))
        elif type(mod) is nn.Flatten and mod.start_dim == 1 and mod.end_dim == -1:
            steps.append(("flatten", None, None))
        elif _is_elementwise(mod) and not list(mod.parameters()):
            steps.append(("act", mod, None))
        else:
            return False
        return True

    if not walk(model, "") or not any(kind == "linear" for kind, _, _ in steps):
        return None
    return steps


def _squeeze_scalar_output(out: Tensor) -> Tensor:
    return out.squeeze(-1) if out.dim() >= 2 and out.shape[-1] == 1 else out


def _pm1(y: Tensor, dtype: torch.dtype) -> Tensor:
    """Binary labels as +-1 floats: +-1 labels pass through, integer 0/1 labels are mapped to -1/+1."""
    return y.to(dtype) if y.is_floating_point() else y.to(dtype) * 2 - 1


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    if out.dim() == 1 or out.shape[-1] == 1:  # one logit, binary labels: logistic loss
        return nn.functional.softplus(-_pm1(y, out.dtype) * _squeeze_scalar_output(out))
    # logsumexp - target logit: the same value as F.cross_entropy, about 3x faster on CPU for few classes.
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
        # frozen parameters (requires_grad=False) are passed as constants
        self._frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in set(self.names)}
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
        p = self.unflatten(theta)
        if self._frozen:
            p = {**self._frozen, **p}
        return functional_call(self.model, (p, self.buffers), (x,))

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
        return self._hvp_fresh(theta, v)

    def hvp_operator(self, theta: Tensor, method: str = "retained",
                     memory: int | None = None) -> Callable[[Tensor], Tensor]:
        """A function ``v -> H(theta) v`` for many exact products at one point (Lanczos, traces, densities).

        ``v``: (N,) or (K, N) (then (K, N) out). Every method gives the exact Hessian (up to round-off);
        they differ in what is kept between products.

        ``method="retained"`` (default): reverse-over-reverse, the way PyHessian does it. At construction
        each data chunk's gradient is computed once with ``create_graph=True`` and its graph kept; a product
        is one backward pass through the kept graphs (``autograd.grad(g, theta, v, retain_graph=True)``).
        Memory: the tensors the forward and backward passes of a chunk save, kept for every chunk, i.e.
        about the activation memory of one training step on the whole data set (a few activation-sized
        tensors per layer and example: about 2.5 MB for an MLP 784-64-10 on 2000 examples in float64,
        beyond the data themselves). The kept graphs are counted (the saved tensors of each chunk's graph)
        and chunks beyond ``memory`` bytes (default 1 GiB) are not kept but recomputed by a fresh
        forward-over-reverse product each time, so memory stays bounded on any data set.
        ``method="jvp"``: forward-over-reverse (``jvp`` of ``grad``, :meth:`hvp`) recomputed from scratch at
        every product: nothing kept (the memory of one chunk), but each product redoes the forward and
        backward passes. ``method="linearize"``: :func:`torch.func.linearize` of the gradient once per
        chunk (a traced linear function kept per chunk), then one forward-mode pass per product.

        Why the default is reverse-over-reverse (the design's "HVPs are forward-over-reverse" still holds
        for one-off products, :meth:`hvp`): measured on a CPU (1 thread, MLP 784-64-10, 2000 examples,
        float64, ranges over runs on a shared machine), one product costs 7 to 10 ms retained (the same as
        PyHessian's), 7 to 11 ms linearized and 22 to 35 ms fresh forward-over-reverse (which recomputes
        the primal passes: 4 large matrix products instead of 2, plus the function-transform overhead),
        while setting up costs 7 to 11 ms (one gradient with its graph) retained and 0.4 to 1.6 s
        linearized (tracing). End to end, from theta to the top eigenvalue in 5 to 8 products, retained is
        2.5 to 3 times faster than fresh forward-over-reverse and 14 to 25 times faster than linearize
        (``benchmarks/measures.py``). On small networks (jamming /
        perceptron scale), where per-call overhead dominates, a retained product is about 5 times faster
        than a fresh jvp, and blocks of vectors go through one vmapped backward pass.
        """
        theta = self._check_theta(theta)
        if method == "jvp":
            single = lambda v: self._hvp_fresh(theta, v)  # noqa: E731
            block = lambda V: vmap(single)(V)  # noqa: E731
        elif method == "linearize":
            single = self._linearized(theta)
            block = lambda V: vmap(single)(V)  # noqa: E731
        elif method == "retained":
            if memory is not None and memory < 0:
                raise ConfigError(f"memory must be a number of bytes >= 0, got {memory}")
            single = self._retained(theta, DEFAULT_RETAIN_BYTES if memory is None else int(memory))
            block = single.block  # type: ignore[attr-defined]
        else:
            raise ConfigError(f"method must be one of {HVP_METHODS}, got {method!r}")

        def op(v: Tensor) -> Tensor:
            v = torch.as_tensor(v).to(self.device, self.dtype)
            if v.dim() == 2 and v.shape[1] == self.n_params:
                return block(v) if v.shape[0] else v.clone()
            if v.shape != theta.shape:
                raise ConfigError(f"v must have shape {tuple(theta.shape)} or (K, {self.n_params}), "
                                  f"got {tuple(v.shape)}")
            return single(v)

        op.method = method  # type: ignore[attr-defined]
        # grad f(theta) (N,) where the method computed it anyway (retained, every chunk kept), else None
        op.gradient = getattr(single, "gradient", None)  # type: ignore[attr-defined]
        # retained: bytes of the kept graphs and number of chunks recomputed at every product
        op.kept_bytes = getattr(single, "kept_bytes", 0)  # type: ignore[attr-defined]
        op.recomputed_chunks = getattr(single, "recomputed_chunks", 0)  # type: ignore[attr-defined]
        return op

    def _finish_grad(self, total: Tensor, theta: Tensor) -> Tensor:
        g = total / self.n_examples
        return g + 2.0 * self.l2 * theta if self.l2 else g

    def _finish_hvp(self, out: Tensor, v: Tensor) -> Tensor:
        out = out / self.n_examples
        return out + 2.0 * self.l2 * v if self.l2 else out

    def _hvp_fresh(self, theta: Tensor, v: Tensor, chunks=None) -> Tensor:
        """Forward-over-reverse sum over chunks of H_chunk v (not divided by P), no regulariser."""
        g = grad(self._chunk_sum)
        out = torch.zeros_like(theta)
        for x, y in self._chunks() if chunks is None else chunks:
            out = out + jvp(lambda t: g(t, x, y), (theta,), (v,))[1]
        return self._finish_hvp(out, v) if chunks is None else out

    def _linearized(self, theta: Tensor) -> Callable[[Tensor], Tensor]:
        from torch.func import linearize

        g = grad(self._chunk_sum)
        with warnings.catch_warnings():  # torch.fx constant folding inside linearize warns about get_attr nodes
            warnings.simplefilter("ignore", UserWarning)
            lins = [linearize(lambda t, x=x, y=y: g(t, x, y), theta)[1] for x, y in self._chunks()]

        def single(v: Tensor) -> Tensor:
            out = lins[0](v)
            for jf in lins[1:]:
                out = out + jf(v)
            return self._finish_hvp(out, v)

        return single

    def _retained(self, theta: Tensor, budget: int) -> Callable[[Tensor], Tensor]:
        """Reverse-over-reverse products through gradient graphs kept per chunk (up to ``budget`` bytes)."""
        t = theta.detach().clone().requires_grad_(True)
        own = [self.X, self.y, t, *self.buffers.values(), *self._frozen.values(), *self.model.parameters()]
        seen = {_storage_key(a) for a in own}
        G: Tensor | None = None
        gsum = torch.zeros_like(theta)  # the gradient of the kept chunks, a by-product
        fresh: list[tuple[Tensor, Tensor]] = []
        kept, full = 0, budget <= 0
        for x, y in self._chunks():
            if not full:
                with torch.enable_grad():
                    g = torch.autograd.grad(self._chunk_sum(t, x, y), t, create_graph=True)[0]
                    gsum += g.detach()
                    if not g.requires_grad:  # the gradient does not depend on theta: no curvature here
                        continue
                    size = _graph_bytes(g.grad_fn, seen)
                    if kept + size <= budget:
                        kept += size
                        G = g if G is None else G + g
                        continue
                full = True  # budget spent: this chunk and the following ones are recomputed at every product
                del g
            fresh.append((x, y))

        def products(V: Tensor, batched: bool) -> Tensor:
            """H v for v (N,) (batched=False) or H V^T for V (k, N), not yet divided by P."""
            if G is not None:
                with torch.enable_grad():
                    out = torch.autograd.grad(G, t, V, retain_graph=True, is_grads_batched=batched)[0]
            else:
                out = torch.zeros_like(V)
            if fresh:
                f = lambda u: self._hvp_fresh(theta, u, fresh)  # noqa: E731
                out = out + (vmap(f)(V) if batched else f(V))
            return out

        def single(v: Tensor) -> Tensor:
            return self._finish_hvp(products(v.detach(), False), v)

        # K vectors: sub-blocks through one vmapped backward pass each (cheaper per vector than a loop on
        # small networks), sized so that their temporaries stay near RETAIN_BLOCK_ELEMENTS; large networks
        # (one product's activations above that) loop over the vectors
        per_product = max(1, kept // self.X.element_size())
        k_sub = max(1, RETAIN_BLOCK_ELEMENTS // per_product)
        state = {"batched": k_sub > 1}

        def block(V: Tensor) -> Tensor:
            V = V.detach()
            if state["batched"]:
                try:
                    return torch.cat([self._finish_hvp(products(V[i : i + k_sub], True), V[i : i + k_sub])
                                      for i in range(0, V.shape[0], k_sub)])
                except RuntimeError:  # an operation without a batching rule for its double backward
                    state["batched"] = False
            return torch.stack([single(u) for u in V])

        single.block = block  # type: ignore[attr-defined]
        # the gradient at theta came with the kept graphs (all chunks kept): free for callers (e.g. a
        # Lanczos start vector); None when some chunks are recomputed
        single.gradient = None if fresh else self._finish_grad(gsum, theta)  # type: ignore[attr-defined]
        single.kept_bytes = kept  # type: ignore[attr-defined]
        single.recomputed_chunks = len(fresh)  # type: ignore[attr-defined]
        return single

    def batched_loss_and_grad(self, thetas: Tensor) -> tuple[Tensor, Tensor]:
        """f and grad f at K parameter vectors in vmapped passes: (K, N) -> ((K,), (K, N))."""
        gv = vmap(grad_and_value(self._chunk_sum), in_dims=(0, None, None))
        return self._mean_value_and_grad(gv, self._check_theta(thetas, batched=True))

    def batched_loss(self, thetas: Tensor, budget: int | None = None) -> Tensor:
        """f at K parameter vectors in vmapped passes. thetas: (K, N) -> (K,).

        ``budget`` bounds (vectors x examples) per pass (default 131072); the K vectors and the data are
        split accordingly.
        """
        return self._batched(thetas, self._loss_fn, budget, add_reg=True)

    def batched_error(self, thetas: Tensor, budget: int | None = None) -> Tensor:
        """Training error (fraction of misclassified examples) at K vectors. (K, N) -> (K,)."""
        return self._batched(thetas, predictions_error, budget, add_reg=False)

    def _batched(self, thetas: Tensor, fn: Callable, budget: int | None, add_reg: bool) -> Tensor:
        thetas = self._check_theta(thetas, batched=True)
        K = thetas.shape[0]
        budget = int(budget or DEFAULT_BATCH_BUDGET)
        chain = self.linear_chain()
        if chain is not None:
            # activations (copies x examples x width) stay below CHAIN_PASS_ELEMENTS: large temporaries are
            # slow to allocate (page faults) and leave the caches
            width = max(self.chain_param(self.theta[None], a).shape[-2] for kind, a, _ in chain if kind == "linear")
            budget = max(1, min(budget, CHAIN_PASS_ELEMENTS // width))
        k_step = max(1, min(K, budget // min(self.n_examples, self.chunk)))
        d_step = max(1, min(self.chunk, budget // k_step))

        def one(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return fn(self._forward(theta, x), y).sum()

        if chain is not None and self._chain_input(chain, self.X[:1]) is not None:
            # Linear layers and elementwise activations: explicit batched matrix products (one GEMM for the
            # first layer of all K copies, then one batched GEMM per layer), no vmap
            def batched(th: Tensor, x: Tensor, y: Tensor) -> Tensor:
                out = self.chain_outputs(th, x, chain)  # (k, B, ...)
                k, B = out.shape[:2]
                per = fn(out.reshape(k * B, *out.shape[2:]), y.repeat(k, *([1] * (y.dim() - 1))))
                return per.view(k, B).sum(1)
        else:
            batched = vmap(one, in_dims=(0, None, None))
        out = torch.empty(K, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for k in range(0, K, k_step):
                th = thetas[k : k + k_step]
                out[k : k + k_step] = sum(batched(th, x, y) for x, y in self._chunks(d_step)) / self.n_examples
        if add_reg and self.l2:
            out += self.l2 * (thetas * thetas).sum(-1)
        return out

    # ------------------------------------------------------------------ chains of Linear layers
    def linear_chain(self) -> list[tuple[str, Any, Any]] | None:
        """The model as a chain of steps if it is made only of ``nn.Linear`` layers, ``nn.Flatten`` and
        elementwise activations (``nn.Sequential``, nested or not: the flatminima MLP), else None.

        Steps: ``("linear", weight name, bias name or None)``, ``("act", module)``, ``("flatten", None, None)``.
        Used by the batched evaluations (explicit matrix products instead of vmap) and by the local
        reparameterisation sampler of :mod:`flatminima.measures.local_energy`.
        """
        if not hasattr(self, "_chain_cache"):
            self._chain_cache = _parse_chain(self.model)
        return self._chain_cache

    def _chain_input(self, chain: list, x: Tensor) -> Tensor | None:
        """x (B, ...) through the steps before the first Linear layer, as (B, d); None if that is not 2-D."""
        for kind, a, _ in chain:
            if kind == "linear":
                break
            x = x.reshape(x.shape[0], -1) if kind == "flatten" else a(x)
        return x if x.dim() == 2 else None

    def chain_param(self, thetas: Tensor, name: str) -> Tensor:
        """Parameter ``name`` of a Linear chain at K vectors thetas (K, N): (K, *shape); a frozen parameter
        is returned as is (its own shape, shared by the K vectors)."""
        if not hasattr(self, "_offsets"):
            starts = torch.tensor([0, *self.numels]).cumsum(0).tolist()
            self._offsets = {n: (s0, k, sh) for n, s0, k, sh in zip(self.names, starts, self.numels, self.shapes)}
        if name in self._offsets:
            s0, k, sh = self._offsets[name]
            return thetas[:, s0 : s0 + k].reshape(thetas.shape[0], *sh)
        return self._frozen[name]

    def chain_outputs(self, thetas: Tensor, x: Tensor, chain: list | None = None) -> Tensor:
        """Outputs (K, B, d_out) of a Linear-chain model (:meth:`linear_chain`) at K parameter vectors
        thetas (K, N) for inputs x (B, ...): the first layer of all K copies is one matrix product
        ``x @ W_all^T`` with W_all (K*h, d), each later layer one batched product (biases fused in)."""
        chain = self.linear_chain() if chain is None else chain
        K = thetas.shape[0]
        h = None  # (K, B, features) once the first Linear layer has been applied
        for kind, a, b in chain:
            if kind == "flatten":
                if h is None:
                    x = x.reshape(x.shape[0], -1)
            elif kind == "act":
                if h is None:
                    x = a(x)
                else:
                    h = a(h)
            else:
                W = self.chain_param(thetas, a)
                bias = self.chain_param(thetas, b) if b is not None else None
                if h is None:
                    if W.dim() == 2:  # frozen first layer: shared by the K copies
                        h = nn.functional.linear(x, W, bias if bias is not None and bias.dim() == 1 else None)
                        h = h.expand(K, *h.shape)
                        if bias is not None and bias.dim() == 2:
                            h = h + bias[:, None]
                        continue
                    o = W.shape[1]
                    Wall = W.reshape(K * o, W.shape[2])
                    if bias is None:
                        z = x @ Wall.T
                    else:
                        z = torch.addmm(bias.reshape(-1) if bias.dim() == 2 else bias.repeat(K), x, Wall.T)
                    h = z.view(x.shape[0], K, o).transpose(0, 1)  # (K, B, o), a strided view
                else:
                    Wt = W.transpose(-1, -2)
                    if bias is None:
                        h = torch.matmul(h, Wt)
                    elif W.dim() == 3:
                        h = torch.baddbmm(bias[:, None] if bias.dim() == 2 else bias, h, Wt)
                    else:
                        h = torch.matmul(h, Wt) + (bias[:, None] if bias.dim() == 2 else bias)
        if h is None:
            raise ConfigError("the model has no Linear layer")
        return h

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

    def with_data(self, data: Any) -> "Landscape":
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
        """The full (N, N) Hessian, built from N HVPs in vmapped blocks (small N only)."""
        theta = self._check_theta(theta)
        if self.n_params > 20000:
            raise ConfigError(f"dense Hessian of N={self.n_params} parameters would not fit; use measures.hessian")
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        block = max(1, min(self.n_params, 256))
        rows = [self.hvp(theta, eye[i : i + block]) for i in range(0, self.n_params, block)]
        H = torch.cat(rows)
        return 0.5 * (H + H.T)

    def __repr__(self) -> str:
        return (
            f"Landscape(model={type(self.model).__name__}, N={self.n_params}, P={self.n_examples}, "
            f"loss={self.loss_name!r}, dtype={self.dtype}, device={self.device})"
        )

