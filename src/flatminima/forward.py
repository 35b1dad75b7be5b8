"""One batched forward pass of a network at many parameter vectors.

Replicas, perturbed copies, band images and Langevin chains all need the outputs of K copies of one
network that differ only in their parameters. :class:`BatchedForward` computes them in one pass:

* a network made only of ``nn.Linear`` layers, ``nn.Flatten`` and elementwise activations (nested
  ``nn.Sequential`` allowed: the flatminima MLP) goes through explicit matrix products: the first layer
  of all K copies is one ``x @ W_all^T`` with ``W_all`` (K*h, d) when the copies share their inputs, each
  later layer one batched product with the bias fused in;
* any other network goes through ``torch.func.vmap`` over ``functional_call``.

Both paths are differentiable (autograd or torch.func) with respect to the parameters.

Example
-------
>>> import torch
>>> from flatminima.forward import BatchedForward
>>> model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> fwd = BatchedForward(model)
>>> thetas = torch.randn(4, fwd.n_params)          # (K, N)
>>> fwd(thetas, torch.randn(10, 5)).shape          # (K, B, 3)
torch.Size([4, 10, 3])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .errors import ConfigError

__all__ = ["BatchedForward", "Step", "ELEMENTWISE", "is_elementwise"]

#: torch modules applied elementwise (allowed between the Linear layers of a chain). A module of our own
#: is elementwise when its class sets ``elementwise = True`` (e.g. :class:`flatminima.models.mlp.Erf`).
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.ELU, nn.CELU, nn.SELU,
               nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.Identity, nn.Dropout)


def is_elementwise(m: nn.Module) -> bool:
    """True if ``m`` maps each element of its input on its own, without parameters or in-place writes."""
    if getattr(m, "inplace", False) or any(True for _ in m.parameters()):
        return False
    return type(m) in ELEMENTWISE or getattr(type(m), "elementwise", False) is True


class Step(NamedTuple):
    """One step of a Linear chain: ``kind`` is ``"linear"`` (``weight``, ``bias``: parameter names, bias
    None without one), ``"act"`` (an elementwise ``module``) or ``"flatten"`` (``nn.Flatten()``)."""

    kind: str
    module: nn.Module
    weight: str | None = None
    bias: str | None = None


def _parse_chain(model: nn.Module) -> tuple[Step, ...] | None:
    steps: list[Step] = []
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
            steps.append(Step("linear", mod, prefix + "weight", prefix + "bias" if mod.bias is not None else None))
        elif type(mod) is nn.Flatten and mod.start_dim == 1 and mod.end_dim == -1:
            steps.append(Step("flatten", mod))
        elif is_elementwise(mod):
            steps.append(Step("act", mod))
        else:
            return False
        return True

    if not walk(model, "") or not any(s.kind == "linear" for s in steps):
        return None
    return tuple(steps)


def _linear(h: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """h (K, B, i) through K layers W (K, o, i) (or one shared (o, i)), b (K, o), (o,) or None: (K, B, o)."""
    Wt = W.transpose(-1, -2)
    if b is None:
        return torch.matmul(h, Wt)
    b = b[:, None] if b.dim() == 2 else b
    if W.dim() == 3:
        return torch.baddbmm(b, h, Wt)
    return torch.matmul(h, Wt) + b


def _first_linear(x: Tensor, W: Tensor, b: Tensor | None, K: int) -> Tensor:
    """Inputs x (B, d) shared by K copies through W (K, o, d) or (o, d), b (K, o), (o,) or None: (K, B, o).

    The K weight matrices are stacked into one (K*o, d) matrix: one matrix product for all copies."""
    if W.dim() == 2:  # a frozen first layer: the same for every copy
        h = nn.functional.linear(x, W, b if b is not None and b.dim() == 1 else None).expand(K, -1, -1)
        return h + b[:, None] if b is not None and b.dim() == 2 else h
    o = W.shape[1]
    Wall = W.reshape(K * o, W.shape[2])
    if b is None:
        z = x @ Wall.T
    else:
        z = torch.addmm(b.reshape(-1) if b.dim() == 2 else b.repeat(K), x, Wall.T)
    return z.view(x.shape[0], K, o).transpose(0, 1)  # (K, B, o), a strided view


class BatchedForward:
    """Outputs of K copies of ``model`` with parameters ``thetas`` (K, N) in one pass.

    Parameters
    ----------
    model : nn.Module
        The network, called as it is (its training / evaluation mode and its buffers are used; it is
        never modified).
    names : sequence of str, optional
        The parameters that make up the flat vector, in its order (default: the model's trainable ones,
        ``requires_grad=True``, in ``named_parameters()`` order, the layout of
        :class:`~flatminima.Landscape`). Every other parameter is a constant shared by the K copies.

    Attributes
    ----------
    names, shapes, numels : lists
        Names, shapes and sizes of the parameter tensors of the flat layout; ``n_params`` N their total.
    chain : tuple of :class:`Step` or None
        The model as a chain of Linear layers, ``nn.Flatten`` and elementwise activations (see
        :func:`is_elementwise`), or None when it is not one (then every pass is vmapped).
    width : int or None
        The largest ``out_features`` of the chain's Linear layers (None without a chain): a copy's
        widest activation per example, for sizing passes.
    """

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        own = dict(model.named_parameters())
        self.names = [n for n, p in own.items() if p.requires_grad] if names is None else list(names)
        missing = [n for n in self.names if n not in own]
        if missing:
            raise ConfigError(f"the model has no parameters named {missing}")
        if not self.names:
            raise ConfigError("the model has no trainable parameters")
        self.shapes = [tuple(own[n].shape) for n in self.names]
        self.numels = [own[n].numel() for n in self.names]
        self.n_params = int(sum(self.numels))
        starts = [0]
        for k in self.numels[:-1]:
            starts.append(starts[-1] + k)
        self._slices = {n: (s, k, sh) for n, s, k, sh in zip(self.names, starts, self.numels, self.shapes)}
        self.chain = _parse_chain(model)
        self.width = None if self.chain is None else max(
            s.module.out_features for s in self.chain if s.kind == "linear")

    def param(self, thetas: Tensor, name: str) -> Tensor:
        """Parameter ``name`` at K vectors thetas (K, N): a (K, *shape) view; a parameter outside the
        flat layout is the model's own (its shape, shared by the K copies, detached)."""
        if name in self._slices:
            s, k, sh = self._slices[name]
            return thetas[:, s : s + k].reshape(thetas.shape[0], *sh)
        return self.model.get_parameter(name).detach()

    def unflatten(self, thetas: Tensor) -> dict[str, Tensor]:
        """K flat vectors (K, N) as ``{name: (K, *shape)}`` views."""
        return {n: self.param(thetas, n) for n in self.names}

    def chain_input(self, x: Tensor, per_copy: bool = False) -> Tensor | None:
        """Inputs through the chain's steps before its first Linear layer: x (B, ...) to (B, d), or with
        ``per_copy`` x (K, B, ...) to (K, B, d); None when the model has no chain or the result is not
        a batch of vectors (e.g. sequences (B, T, d) through a Linear layer)."""
        if self.chain is None:
            return None
        lead = 2 if per_copy else 1
        for step in self.chain:
            if step.kind == "linear":
                break
            x = x.flatten(lead) if step.kind == "flatten" else step.module(x)
        return x if x.dim() == lead + 1 else None

    def __call__(self, thetas: Tensor, x: Tensor, per_copy: bool = False) -> Tensor:
        """Outputs (K, B, ...) of the K copies thetas (K, N) on inputs x (B, ...) shared by all copies, or
        with ``per_copy`` x (K, B, ...), copy k on its own inputs x[k]."""
        if thetas.dim() != 2 or thetas.shape[1] != self.n_params:
            raise ConfigError(f"thetas must have shape (K, {self.n_params}), got {tuple(thetas.shape)}")
        return self.stacked(self.unflatten(thetas), x, per_copy)

    def stacked(self, params: Mapping[str, Tensor], x: Tensor, per_copy: bool = False) -> Tensor:
        """As :meth:`__call__` with the parameters given by name, ``{name: (K, *shape)}`` (for example an
        optimizer's replicas); parameters not in ``params`` are the model's own, detached, shared by the
        K copies."""
        if not params:
            raise ConfigError("params is empty: give at least one stacked parameter")
        K = next(iter(params.values())).shape[0]
        if per_copy and x.shape[0] != K:
            raise ConfigError(f"per-copy inputs must have K={K} rows first, got shape {tuple(x.shape)}")
        h = self.chain_input(x, per_copy)
        if h is None:
            fixed = {n: p.detach() for n, p in self.model.named_parameters() if n not in params}

            def one(p: dict[str, Tensor], xi: Tensor) -> Tensor:
                return functional_call(self.model, {**fixed, **p}, (xi,))

            return vmap(one, in_dims=(0, 0 if per_copy else None), randomness="different")(dict(params), x)

        def get(name: str | None) -> Tensor | None:
            if name is None:
                return None
            p = params.get(name)
            return self.model.get_parameter(name).detach() if p is None else p

        first = True
        for step in self.chain[next(i for i, s in enumerate(self.chain) if s.kind == "linear"):]:
            if step.kind == "linear":
                W, b = get(step.weight), get(step.bias)
                h = _first_linear(h, W, b, K) if first and not per_copy else _linear(h, W, b)
                first = False
            elif step.kind == "act":
                h = step.module(h)
            # a Flatten after a Linear layer sees (B, features): nothing to do
        return h
