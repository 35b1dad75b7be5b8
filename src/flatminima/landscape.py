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

The data may also be any re-iterable of ``(inputs, targets)`` batches, such as a
:class:`torch.utils.data.DataLoader`: every pass streams over it (see :class:`Landscape`), and with
``distributed=True`` each process of a :mod:`torch.distributed` job holds a shard and the sums are
all-reduced (see :class:`Landscape` for how to launch it).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
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
    """Resolve a loss name (``"cross_entropy"``, ``"mse"``, ``"hinge2"``) or pass a callable through.

    A torch loss module such as ``nn.CrossEntropyLoss()`` is evaluated with ``reduction="none"`` and
    averaged over each example's remaining axes, so that the mean over examples is the module's own
    ``"mean"`` (unweighted: class weights are not renormalised).
    """
    if isinstance(name_or_fn, nn.modules.loss._Loss) and getattr(name_or_fn, "reduction", "none") != "none":
        module = copy.copy(name_or_fn)
        module.reduction = "none"

        def per_example(out: Tensor, y: Tensor) -> Tensor:
            per = module(out, y)
            return per.reshape(per.shape[0], -1).mean(-1) if per.dim() > 1 else per

        per_example.__name__ = type(name_or_fn).__name__
        return per_example
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


def _is_array(a: Any) -> bool:
    return isinstance(a, (Tensor, np.ndarray))


def _as_xy(data: Any) -> tuple[Tensor, Tensor] | None:
    """``(X, y)`` tensors of a tensor pair or a flatminima Dataset (its training split); None for anything else."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and _is_array(data[0]) and _is_array(data[1]):
        X, y = data
    elif hasattr(data, "X_train") and hasattr(data, "y_train"):
        X, y = data.X_train, data.y_train
    else:
        return None
    X = torch.as_tensor(X)
    y = torch.as_tensor(y)
    if X.dim() == 0 or y.dim() == 0 or X.shape[0] != y.shape[0]:
        raise ConfigError(f"X and y must have the same number of examples first, got shapes {tuple(X.shape)} "
                          f"and {tuple(y.shape)}")
    if X.shape[0] == 0:
        raise ConfigError("the data set is empty")
    return X, y


def _to(t: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Floating tensors to ``dtype`` on ``device``; integer labels keep their type."""
    return t.to(device, dtype=dtype) if t.is_floating_point() else t.to(device)


class _TensorData:
    """A data set held as two tensors X (P, ...), y (P, ...) on the landscape's device."""

    def __init__(self, X: Tensor, y: Tensor, dtype: torch.dtype, device: torch.device) -> None:
        self.X, self.y = _to(X, dtype, device), _to(y, dtype, device)
        self.n_local = int(self.X.shape[0])

    def chunks(self, size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, self.n_local, size):
            yield self.X[i : i + size], self.y[i : i + size]

    def own_tensors(self) -> list[Tensor]:
        return [self.X, self.y]


class _StreamData:
    """A data set streamed from a re-iterable of ``(x, y)`` batches, one batch in memory at a time.

    The examples are counted at construction (one pass that loads the batches and computes nothing);
    every later pass checks that the iterable yields as many again.
    """

    def __init__(self, batches: Iterable, dtype: torch.dtype, device: torch.device) -> None:
        if iter(batches) is batches:
            raise ConfigError("data must be re-iterable (a DataLoader, a list of batches), not a one-shot iterator "
                              "or generator: every loss, gradient and Hessian-vector product is one pass over it")
        self.batches, self.dtype, self.device = batches, dtype, device
        self.n_local = 0
        for x, _ in self._batches():
            self.n_local += int(x.shape[0])
        if self.n_local == 0:
            raise ConfigError("the data set is empty: the iterable yielded no examples")

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i, batch in enumerate(self.batches):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ConfigError(f"batch {i} of the data is a {type(batch).__name__}, not a pair (inputs, targets); "
                                  "wrap other formats in a generator of (x, y) pairs")
            x, y = torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
            if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
                raise ConfigError(f"batch {i}: inputs {tuple(x.shape)} and targets {tuple(y.shape)} must have the same "
                                  "number of examples first (a torch Dataset of single examples needs a DataLoader)")
            yield _to(x, self.dtype, self.device), _to(y, self.dtype, self.device)

    def chunks(self, size: int) -> Iterator[tuple[Tensor, Tensor]]:
        seen = 0
        for x, y in self._batches():
            seen += int(x.shape[0])
            for i in range(0, x.shape[0], size):
                yield x[i : i + size], y[i : i + size]
        if seen != self.n_local:
            raise ConfigError(f"the data yielded {seen} examples at this pass and {self.n_local} at the first: every "
                              "pass must see the same examples (a DataLoader with shuffle and drop_last does not)")

    def own_tensors(self) -> list[Tensor]:
        return []


def _data_source(data: Any, dtype: torch.dtype, device: torch.device) -> _TensorData | _StreamData:
    xy = _as_xy(data)
    if xy is not None:
        return _TensorData(*xy, dtype, device)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Tensor, np.ndarray)):
        return _StreamData(data, dtype, device)
    raise ConfigError("data must be a flatminima Dataset, a tuple (X, y) of tensors or an iterable of (x, y) batches "
                      f"such as a DataLoader; got {type(data).__name__}")


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

    def __init__(self, products: Callable[[Tensor, bool], Tensor], finish: Callable[[Tensor, Tensor], Tensor],
                 dim: int, dtype: torch.dtype, device: torch.device, gradient: Tensor | None, kept_bytes: int,
                 recomputed_chunks: int) -> None:
        # products(V, batched): this process's sum over its examples of H_mu v for v (M,), or of the rows
        # H_mu v_k for V (K, M); finish(out, V): the sum over processes, divided by P, plus the regulariser
        self._products, self._finish = products, finish
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
        return self._finish(self._products(v, False), v)

    def matmat(self, V: Tensor) -> Tensor:
        """H v_k for the K rows of V (K, M): (K, M)."""
        V = self._check(V, batched=True)
        self.n_products += V.shape[0]
        if V.shape[0] == 0:
            return V.clone()
        out = None
        if self._k_sub > 1:
            try:
                out = torch.cat([self._products(V[i : i + self._k_sub], True)
                                 for i in range(0, V.shape[0], self._k_sub)])
            except RuntimeError:  # an operation without a batching rule for its double backward
                self._k_sub = 1
        if out is None:
            out = torch.stack([self._products(v, False) for v in V])
        return self._finish(out, V)

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

        return HessianOperator(products, self._finish, int(idx.numel()), self.dtype, self.device,
                               None if self.gradient is None else self.gradient[idx], self.kept_bytes,
                               self.recomputed_chunks)


class Landscape:
    """Loss ``f(theta) = mean_mu loss(model(x_mu; theta), y_mu) + l2 * |theta|^2`` over a data set.

    Parameters
    ----------
    model : nn.Module
        The network. It is copied; the copy is put in evaluation mode, so BatchNorm uses its running
        statistics (never updated) and dropout is off: the landscape is a deterministic function of
        ``theta``, the same whatever the batches. Recalibrate BatchNorm statistics before building the
        landscape if they should reflect the measured point.
    data : Dataset, tuple (X, y) or iterable of (x, y) batches
        ``X``: (P, ...) inputs, ``y``: (P,) class labels, +-1 labels or (P, k) regression targets. A
        flatminima :class:`~flatminima.data.Dataset` contributes its training split. Any other re-iterable
        of ``(x (B, ...), y (B, ...))`` pairs (a :class:`torch.utils.data.DataLoader`, a list of batches)
        is streamed: each loss, gradient, batched loss or Hessian-vector product is one pass over it,
        with one batch (split into pieces of at most ``chunk`` examples) in memory at a time; the examples
        are counted by one pass at construction. Sums run over the batches in the order the iterable
        yields them and over each batch's pieces in order, so every pass must yield the same examples:
        a DataLoader with ``shuffle=True`` gives the same values up to round-off, but not with
        ``drop_last=True`` (other examples dropped at each pass); a pass that yields another number of
        examples raises :class:`~flatminima.errors.ConfigError`. The same examples as one tensor pair
        give the same values up to round-off.
    loss : str or callable
        ``"cross_entropy"`` (softmax CE; logistic loss for one output and +-1 labels), ``"mse"``,
        ``"hinge2"`` (quadratic hinge), or ``fn(outputs, targets) -> (B,)`` per-example losses.
    dtype : torch.dtype, optional
        float32 or float64 for parameters and inputs (default: the model's dtype).
    device : str or torch.device, optional
        Where the parameters and data live (default: the model's device); streamed batches are moved
        there one at a time.
    chunk : int, optional
        Examples per pass (default 8192): memory stays bounded for any data set size.
    l2 : float
        Coefficient of the ``l2 * |theta|^2`` regulariser (0 by default).
    distributed : bool
        Data-parallel over the processes of the default :mod:`torch.distributed` process group (which
        must be initialised): each process passes its own shard of the data, the model's parameters
        and buffers are broadcast from rank 0 (as DistributedDataParallel does), and every sum over
        examples (loss, gradient, Hessian-vector products, batched losses and errors) is all-reduced
        before it is divided by the total number of examples, so every process holds the same
        values and every measure runs unchanged, in step, on all processes. Random probes and start
        vectors come from seeded generators, identical on every rank. Every process must make the
        same calls (they are collective).

        On a cluster: write a script that calls ``torch.distributed.init_process_group("nccl")`` (GPUs;
        ``"gloo"`` on CPUs), picks its GPU (``torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))``),
        builds its shard, ``Subset(dataset, range(rank, len(dataset), world_size))`` (not a
        ``DistributedSampler``, which pads shards with repeated examples), loads the same model and calls
        for example ``flatminima.measures.flatness(model, DataLoader(shard, batch_size=256), loss,
        distributed=True)``; launch it on every node with ``torchrun --nnodes NODES --nproc_per_node
        GPUS --rdzv_backend c10d --rdzv_endpoint HOST:29500 script.py`` (one process per GPU) and keep
        the results of rank 0.

    Attributes
    ----------
    theta : Tensor (N,)
        The model's parameters, flattened in ``model.named_parameters()`` order (a fresh copy).
    n_params : int
        N, the number of trainable parameters.
    n_examples : int
        P, the number of examples (over all processes when distributed).
    n_local : int
        The number of examples of this process (P without ``distributed``).
    example_offset : int
        The index of this process's first example when the shards are put one after another in rank
        order (0 without ``distributed``).
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
        distributed: bool = False,
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
        if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ConfigError("distributed=True needs an initialised torch.distributed process group "
                              "(torch.distributed.init_process_group, for example under torchrun)")
        self.dtype = dtype
        self.device = torch.device(device)
        self.chunk = int(chunk or DEFAULT_CHUNK)
        self.l2 = float(l2)
        self.distributed = bool(distributed)
        self._loss_fn = per_example_loss(loss)
        self.loss_name = loss if isinstance(loss, str) else getattr(self._loss_fn, "__name__", "custom")

        self.model = copy.deepcopy(model).to(device=self.device, dtype=dtype).eval()
        if self.distributed:  # one model on every process: rank 0's
            with torch.no_grad():
                for t in itertools.chain(self.model.parameters(), self.model.buffers()):
                    torch.distributed.broadcast(t, src=0)
        self.names = [n for n, _ in params]
        own = dict(self.model.named_parameters())
        self.shapes = [tuple(own[n].shape) for n in self.names]
        self.numels = [own[n].numel() for n in self.names]
        self.n_params = int(sum(self.numels))
        self.buffers = {n: b for n, b in self.model.named_buffers()}
        #: K parameter vectors (K, N) through the model in one pass (same flat layout as ``theta``)
        self.batched_forward = BatchedForward(self.model, self.names)
        self.theta = torch.cat([own[n].detach().reshape(-1) for n in self.names]).clone()
        self._set_data(data)

    def _set_data(self, data: Any) -> None:
        self._data = _data_source(data, self.dtype, self.device)
        self.n_local = self._data.n_local
        self.n_examples, self.example_offset = self.n_local, 0
        if self.distributed:
            counts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(counts, self.n_local)
            self.n_examples = int(sum(counts))
            self.example_offset = int(sum(counts[: torch.distributed.get_rank()]))

    @property
    def X(self) -> Tensor:
        """The inputs (P, ...) of a landscape built on tensors (a streamed landscape holds none)."""
        return self._tensors().X

    @property
    def y(self) -> Tensor:
        """The targets (P, ...) of a landscape built on tensors (a streamed landscape holds none)."""
        return self._tensors().y

    def _tensors(self) -> _TensorData:
        if not isinstance(self._data, _TensorData):
            raise ConfigError("this landscape streams its data from an iterable of batches and holds no X, y "
                              "tensors; iterate landscape.batches() instead")
        return self._data

    @property
    def loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The per-example loss ``loss_fn(outputs (B, ...), targets (B, ...)) -> (B,)``."""
        return self._loss_fn

    def batches(self, size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's examples as (x (B, ...), y (B, ...)) pieces of at most ``size`` examples (default
        ``chunk``), in the fixed order of every pass, on the landscape's device and dtype."""
        return self._data.chunks(int(size or self.chunk))

    def sum_over_processes(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The tensors summed over the processes (one all-reduce for all of them) when ``distributed``,
        else unchanged: how a sum over this process's examples becomes the sum over all examples."""
        if not self.distributed:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        return tuple(part.view_as(t) for part, t in zip(torch.split(flat, [t.numel() for t in tensors]), tensors))

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
        per = self._loss_fn(self._forward(theta, x), y)
        if per.dim() == 0 and x.shape[0] > 1:
            raise ConfigError(f"the loss {self.loss_name!r} returned one number for a batch of {x.shape[0]} examples; "
                              "it must return per-example losses (B,) (reduction='none')")
        return per.sum()

    def _reg(self, theta: Tensor) -> Tensor:
        return self.l2 * (theta * theta).sum(-1)

    # ------------------------------------------------------------------ public API
    def loss(self, theta: Tensor) -> Tensor:
        """f(theta), a 0-d tensor. theta: (N,)."""
        theta = self._check_theta(theta)
        with torch.no_grad():
            total = theta.new_zeros(())
            for x, y in self.batches():
                total += self._chunk_sum(theta, x, y)
            return self.sum_over_processes(total)[0] / self.n_examples + self._reg(theta)

    def loss_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(f(theta), grad f(theta)): a 0-d tensor and an (N,) tensor."""
        return self._mean_value_and_grad(grad_and_value(self._chunk_sum), self._check_theta(theta))

    def _mean_value_and_grad(self, gv: Callable, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Sum ``gv(theta, x, y) -> (grad, value)`` over the data chunks, divide by P, add the regulariser.

        theta: (N,) or (K, N), with ``gv`` vmapped over K in the second case.
        """
        g = torch.zeros_like(theta)
        f = theta.new_zeros(theta.shape[:-1])
        for x, y in self.batches():
            gc, fc = gv(theta, x, y)
            g += gc
            f += fc.detach()
        g, f = self.sum_over_processes(g, f)
        g /= self.n_examples
        f /= self.n_examples
        if self.l2:
            g += 2.0 * self.l2 * theta
            f += self._reg(theta)
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
        if v.dim() not in (1, 2) or v.shape[-1] != self.n_params:
            raise ConfigError(f"v must have shape ({self.n_params},) or (K, {self.n_params}), got {tuple(v.shape)}")
        if v.dim() == 2 and not v.shape[0]:
            return v.clone()
        return self._finish_hvp(self._hvp_sum(theta, v, self.batches(), batched=v.dim() == 2), v)

    def hvp_operator(self, theta: Tensor, memory: int | None = None) -> HessianOperator:
        """H(theta) as a :class:`HessianOperator` for many exact products at one point (Lanczos, traces,
        densities): ``op(v)`` for v (N,) or (K, N).

        Reverse-over-reverse, the way PyHessian does it: at construction each data chunk's gradient is
        computed once with ``create_graph=True`` and its graph kept; a product is one backward pass through
        the kept graphs, which skips the forward pass a fresh forward-over-reverse product (:meth:`hvp`)
        redoes every time. The graphs hold about the activation memory of one training step on the whole
        data set (and, for streamed data, the kept chunks' inputs). They are counted (the bytes of the
        tensors autograd saves, through :func:`torch.autograd.graph.saved_tensors_hooks`) and the chunks
        after the first ``memory`` bytes (default 1 GiB) are not kept but streamed again and recomputed by
        a fresh forward-over-reverse product each time, so memory stays bounded on any data set;
        ``memory=0`` keeps nothing (every product forward-over-reverse, one batch in memory).
        """
        theta = self._check_theta(theta)
        if memory is not None and memory < 0:
            raise ConfigError(f"memory must be a number of bytes >= 0, got {memory}")
        budget = DEFAULT_RETAIN_BYTES if memory is None else int(memory)
        t = theta.detach().clone().requires_grad_(True)
        own = [*self._data.own_tensors(), t, *self.buffers.values(), *self.model.parameters()]
        seen = {_storage_key(a) for a in own}
        G: Tensor | None = None
        gsum = torch.zeros_like(theta)  # the gradient of the kept chunks, a by-product
        kept, n_kept, n_fresh = 0, 0, 0
        for x, y in self.batches():
            if n_fresh or budget <= 0:
                n_fresh += 1  # budget spent: this chunk and the following ones are recomputed at every product
                continue
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
            if g.requires_grad and kept + size > budget:
                n_fresh = 1
                del g
                continue
            n_kept += 1
            gsum += g.detach()
            if g.requires_grad:  # else the gradient does not depend on theta: no curvature here
                kept += size
                with torch.enable_grad():
                    G = g if G is None else G + g

        def products(V: Tensor, batched: bool) -> Tensor:
            """This process's sum of H_mu v for v (N,) (batched=False) or of the rows H_mu v_k for V (k, N)."""
            if G is not None:
                with torch.enable_grad():
                    out = torch.autograd.grad(G, t, V, retain_graph=True, is_grads_batched=batched)[0]
            else:
                out = torch.zeros_like(V)
            if n_fresh:
                out = out + self._hvp_sum(theta, V, itertools.islice(self.batches(), n_kept, None), batched)
            return out

        # the gradient at theta came with the kept graphs when every chunk (of every process) was kept
        gsum, fresh_any = self.sum_over_processes(gsum, gsum.new_tensor([float(n_fresh)]))
        gradient = None if float(fresh_any) else self._finish_grad(gsum, theta)
        return HessianOperator(products, self._finish_hvp, self.n_params, self.dtype, self.device, gradient, kept,
                               n_fresh)

    def _finish_grad(self, total: Tensor, theta: Tensor) -> Tensor:
        g = total / self.n_examples
        return g + 2.0 * self.l2 * theta if self.l2 else g

    def _finish_hvp(self, out: Tensor, v: Tensor) -> Tensor:
        """The sum over processes of the per-process sums ``out`` of H_mu v, divided by P, plus the regulariser."""
        out = self.sum_over_processes(out)[0] / self.n_examples
        return out + 2.0 * self.l2 * v if self.l2 else out

    def _hvp_sum(self, theta: Tensor, v: Tensor, chunks: Iterable[tuple[Tensor, Tensor]],
                 batched: bool = False) -> Tensor:
        """Forward-over-reverse sum over ``chunks`` of H_chunk v (not divided by P), no regulariser; v (N,),
        or with ``batched`` the rows of V (K, N), vmapped within each chunk (the data are iterated outside
        vmap: a DataLoader draws a random seed when it starts a pass)."""
        g = grad(self._chunk_sum)
        out = torch.zeros_like(v)
        for x, y in chunks:
            one = lambda u: jvp(lambda t: g(t, x, y), (theta,), (u,))[1]  # noqa: E731
            out = out + (vmap(one)(v) if batched else one(v))
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
        split accordingly (one pass over the data, each piece through every block of vectors).
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
        k_step = max(1, min(K, budget // min(self.n_local, self.chunk)))
        d_step = max(1, min(self.chunk, budget // k_step))
        out = torch.zeros(K, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for x, y in self.batches(d_step):
                for k in range(0, K, k_step):
                    out[k : k + k_step] += self._per_copy_sums(thetas[k : k + k_step], x, y, fn)
        out = self.sum_over_processes(out)[0] / self.n_examples
        return out + self._reg(thetas) if add_reg and self.l2 else out

    def outputs(self, theta: Tensor, X: Tensor | None = None) -> Tensor:
        """Network outputs (P, ...) for this process's examples in pass order, or for inputs X (B, ...)."""
        theta = self._check_theta(theta)
        with torch.no_grad():
            if X is None:
                return torch.cat([self._forward(theta, x) for x, _ in self.batches()])
            X = torch.as_tensor(X).to(self.device, self.dtype)
            return torch.cat([self._forward(theta, X[i : i + self.chunk]) for i in range(0, X.shape[0], self.chunk)])

    def per_example_losses(self, theta: Tensor) -> Tensor:
        """Loss of each of this process's examples (P,), in pass order, without the regulariser."""
        theta = self._check_theta(theta)
        with torch.no_grad():
            return torch.cat([self._loss_fn(self._forward(theta, x), y) for x, y in self.batches()])

    def error(self, theta: Tensor, X: Tensor | None = None, y: Tensor | None = None) -> float:
        """Fraction of misclassified examples (the landscape's data, over all processes, unless X, y are given)."""
        if X is not None:
            out = self.outputs(theta, X)
            return float(predictions_error(out, (self.y if y is None else torch.as_tensor(y)).to(self.device)).mean())
        theta = self._check_theta(theta)
        wrong = theta.new_zeros(())
        with torch.no_grad():
            for x, t in self.batches():
                wrong += predictions_error(self._forward(theta, x), t).sum()
        return float(self.sum_over_processes(wrong)[0]) / self.n_examples

    def with_data(self, data: Any) -> Landscape:
        """The same model, loss and precision on other data (for example the test split of a Dataset)."""
        if hasattr(data, "X_test") and not isinstance(data, (tuple, list)):
            data = (data.X_test, data.y_test)
        new = copy.copy(self)
        new._set_data(data)
        return new

    def dense_hessian(self, theta: Tensor) -> Tensor:
        """The full (N, N) Hessian, from N products in vmapped blocks, symmetrised (small N only)."""
        return to_dense(self.hvp_operator(theta))

    def __repr__(self) -> str:
        return (
            f"Landscape(model={type(self.model).__name__}, N={self.n_params}, P={self.n_examples}, "
            f"loss={self.loss_name!r}, dtype={self.dtype}, device={self.device})"
        )
