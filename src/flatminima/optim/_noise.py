"""Fresh Gaussian noise from a counter-based generator, added in place (Entropy-SGD's Langevin noise).

:class:`NoiseSource` adds ``scale * N(0, 1)`` to a list of tensors. Its whole state is two integers, a key
and a counter: call number ``c`` (the counter before the call) adds, to the element at position ``i`` of
the concatenation of the tensors, a normal variate that is a pure function of ``(key, c, i)`` (and of the
dtype). So runs are reproducible, any state can be saved as plain ints, and different keys or counters
give independent streams.

Two backends, chosen per tensor:

* the C kernel :mod:`flatminima._fastrand` (SplitMix64 + branch-free Box-Muller, fused with the add;
  AVX-512 / AVX2 / portable paths with identical results) for contiguous CPU float32 / float64 tensors;
* torch's generator otherwise (CUDA, half precision, non-contiguous tensors), or everywhere with
  ``backend="torch"``, the environment variable ``FLATMINIMA_NOISE=torch``, when the extension was not
  built, or (with ``backend="auto"``) when the CPU has neither AVX2 + FMA nor AVX-512 (the kernel's
  portable path is slower than torch there): for each call a generator on each device involved is seeded
  from ``(key, c)`` and draws one flat ``torch.randn`` per dtype (in order of first appearance), which is
  added in place (``Tensor.add_`` semantics). torch's CPU generator (mt19937) keeps only the low 32 bits
  of a seed, so there those bits are ``(k1 + c * k2) mod 2**32`` (k1, k2 from the key, k2 odd): distinct
  for 2**32 consecutive calls, so no step repeats the noise of another (a hashed 32-bit seed would, after
  ~10**5 steps, by the birthday bound).

The two backends draw different (equally valid) numbers for the same state.

:func:`sgld_plan` / :func:`sgld_step_` run Entropy-SGD's whole inner (SGLD) step in the kernel's pass,
``d = g + wd p + gamma (p - x)``, ``p <- p - lr d + scale xi``, ``mu <- lerp(mu, p, w)``, with the very
noise ``NoiseSource.add_`` would add for the same state (so fused and unfused runs draw the same stream),
or without noise (``scale = 0``, no source needed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

try:
    from .. import _fastrand
except ImportError:  # not built (no compiler at install time): torch's generator throughout
    _fastrand = None
KERNEL_VERSION = 2  # the VERSION of _fastrand.c this module was written for (2: sgld_step)
if _fastrand is not None and getattr(_fastrand, "VERSION", None) != KERNEL_VERSION:  # a stale build
    _fastrand = None

__all__ = ["NoiseSource", "fast_available", "fast_preferred", "sgld_plan", "sgld_step_", "ENV_VAR"]

ENV_VAR = "FLATMINIMA_NOISE"
BACKENDS = ("auto", "fast", "torch")
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_DTYPES = {torch.float32: 0, torch.float64: 1}
try:
    from torch.autograd.graph import increment_version as _bump_version
except ImportError:  # pragma: no cover - older torch
    _bump_version = None


def fast_available() -> bool:
    """Whether the C kernel is importable (it was built at install time)."""
    return _fastrand is not None


def fast_preferred() -> bool:
    """Whether ``backend="auto"`` uses the kernel: built, a SIMD path on this CPU, not disabled by the env var."""
    return (_fastrand is not None and _fastrand.ISA != "generic"
            and os.environ.get(ENV_VAR, "auto").strip().lower() != "torch")


def _mix64(z: int) -> int:
    """splitmix64's finalizer (the same function as the kernel's), on Python ints."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class NoiseSource:
    """Adds ``scale * N(0, 1)`` in place to tensors, from the stream of ``(key, counter)``.

    Parameters
    ----------
    seed : int, the key (taken modulo 2**64).
    backend : ``"auto"`` (the C kernel for contiguous CPU float32/float64 tensors when :func:`fast_preferred`;
        torch's generator for the rest), ``"fast"`` (the kernel for those tensors whatever the CPU or the
        environment; :class:`ConfigError` if it is not built) or ``"torch"`` (torch's generator throughout).
    """

    def __init__(self, seed: int = 0, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"noise backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int, got {seed!r}")
        if backend == "fast" and _fastrand is None:
            raise ConfigError("the C noise kernel flatminima._fastrand is not built (reinstall with a C compiler), "
                              "use backend='auto' or 'torch'")
        self.backend = backend
        self.fast = backend == "fast" or (backend == "auto" and fast_preferred())
        self.key = seed & _MASK
        self.counter = 0
        self._gens: dict[torch.device, torch.Generator] = {}

    # ------------------------------------------------------------------------------------------ state
    def state(self) -> dict[str, int]:
        """``{"key": int, "counter": int}``: plain ints (``torch.load(weights_only=True)`` reads them)."""
        return {"key": self.key, "counter": self.counter}

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            key, counter = state["key"], state["counter"]
        except (KeyError, TypeError):
            raise ConfigError(f"a noise source state is a dict with int 'key' and 'counter', got {state!r}") from None
        for name, v in (("key", key), ("counter", counter)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MASK:
                raise ConfigError(f"noise source {name} must be an int in [0, 2**64), got {v!r}")
        self.key, self.counter = int(key), int(counter)

    def __getstate__(self) -> dict[str, Any]:  # pickling / deepcopy: the generator cache is rebuilt on use
        return {**self.__dict__, "_gens": {}}

    def __repr__(self) -> str:
        return f"NoiseSource(key={self.key}, counter={self.counter}, backend={self.backend!r}, fast={self.fast})"

    # ------------------------------------------------------------------------------------------ noise
    def _eligible(self, t: Tensor) -> bool:
        return self.fast and t.dtype in _DTYPES and _plain(t, t.dtype)

    def _take_counter(self) -> int:
        """The counter of this call; advances it by one."""
        counter = self.counter
        self.counter = (counter + 1) & _MASK
        return counter

    def _torch_seed(self, counter: int, device: torch.device) -> int:
        """Seed of the torch generator on ``device`` for call ``counter``."""
        b = _mix64(self.key)
        if device.type == "cpu":  # mt19937 uses the low 32 bits only: injective in the counter, see above
            k2 = _mix64(b ^ 0x5851F42D4C957F2D) | 1
            return (b + counter * k2) & 0xFFFFFFFF
        index = device.index if device.index is not None else 0
        return _mix64((b + (2 * counter + 1) * _GOLDEN) & _MASK) ^ _mix64(index + 1)  # Philox & co: 64 bits

    def add_(self, tensors: Sequence[Tensor], scale: float) -> None:
        """Add ``scale * N(0, 1)`` to every element of ``tensors`` in place, and advance the counter by one.

        Acts like ``t.add_(noise, alpha=scale)`` under ``torch.no_grad()`` (for parameters and buffers).
        """
        if isinstance(tensors, Tensor):
            tensors = [tensors]
        counter = self._take_counter()
        scale = float(scale)
        rest: dict[torch.device, dict[torch.dtype, list[Tensor]]] = {}
        offset = 0
        fast_done = []
        for t in tensors:
            n = t.numel()
            if n and self._eligible(t):
                _fastrand.add_normal(t.data_ptr(), n, _DTYPES[t.dtype], scale, self.key, counter, offset)
                fast_done.append(t)
            elif n:
                rest.setdefault(t.device, {}).setdefault(t.dtype, []).append(t)
            offset += n
        if fast_done and _bump_version is not None:
            _bump_version(fast_done)  # written through a pointer: tell autograd, as an in-place op would
        if not rest:
            return
        with torch.no_grad():
            for device, by_dtype in rest.items():
                gen = self._gens.get(device)
                if gen is None:
                    gen = self._gens[device] = torch.Generator(device=device)
                gen.manual_seed(self._torch_seed(counter, device))
                for dtype, ts in by_dtype.items():
                    flat = torch.randn(sum(t.numel() for t in ts), generator=gen, device=device, dtype=dtype)
                    for t, z in zip(ts, flat.split([t.numel() for t in ts])):
                        t.add_(z.view_as(t), alpha=scale)


# ------------------------------------------------------------------------------------------ fused SGLD step
def _plain(t: Tensor, dtype: torch.dtype) -> bool:
    """A dense, contiguous CPU tensor of ``dtype`` without a lazy negation: the kernel can take its pointer."""
    return (t.is_cpu and t.dtype is dtype and t.layout is torch.strided and t.is_contiguous()
            and not t.is_neg())


def sgld_plan(ps: Sequence[Tensor], xs: Sequence[Tensor], ms: Sequence[Tensor]) -> list[tuple] | None:
    """What :func:`sgld_step_` needs of a param group's parameters ``ps``, anchors ``xs`` and means ``ms``
    (aligned lists), or None where the fused kernel cannot serve the group: not built, no SIMD path on this
    CPU or ``FLATMINIMA_NOISE=torch`` (see :func:`fast_preferred`), a tensor that is not a contiguous CPU
    float32 / float64 tensor, or tensors that share memory. Valid while the tensors keep their storage (one
    outer step)."""
    if not fast_preferred():
        return None
    rows = []
    offset = 0
    for i, (p, x, m) in enumerate(zip(ps, xs, ms, strict=True)):
        n = p.numel()
        if n:
            code = _DTYPES.get(p.dtype)
            if code is None or not all(_plain(t, p.dtype) and t.shape == p.shape for t in (p, x, m)):
                return None
            row = (i, code, n, offset, p.data_ptr(), x.data_ptr(), m.data_ptr())
            if len(set(row[4:])) < 3:  # the kernel's arrays must not overlap
                return None
            rows.append(row)
        offset += n
    return rows


def sgld_step_(plan: list[tuple], ps: Sequence[Tensor], grads: Sequence[Tensor], ms: Sequence[Tensor], *,
               lr: float, weight_decay: float, gamma: float, weight: float, scale: float = 0.0,
               source: NoiseSource | None = None) -> bool:
    """One SGLD step of Entropy-SGD in place, fused in one pass per tensor (``plan`` from :func:`sgld_plan`
    for these ``ps``, anchors and means ``ms``; ``grads`` aligned with ``ps``, read only):

        d = g + weight_decay p + gamma (p - x);   p <- p - lr d + scale xi;   mu <- lerp(mu, p, weight)

    where ``xi`` is what ``source.add_(ps, scale)`` would add (and, like it, the call advances the source's
    counter by one); without ``source`` no noise is drawn. Returns False, having changed nothing, where
    the kernel cannot take it (a gradient that is not a contiguous tensor of its parameter's dtype, a
    parameter whose storage moved since the plan, a source that does not use the kernel).
    """
    entries = []
    for i, code, n, offset, pp, xp, mp in plan:
        p, gr = ps[i], grads[i]
        if p.data_ptr() != pp or not _plain(gr, p.dtype):
            return False
        entries.append((code, n, offset, pp, gr.data_ptr(), xp, mp))
    key = counter = 0
    if source is not None:
        if not source.fast:
            return False
        key, counter = source.key, source._take_counter()
    else:
        scale = 0.0
    _fastrand.sgld_step(entries, float(lr), float(weight_decay), float(gamma), float(weight), float(scale), key,
                        counter)
    if _bump_version is not None:
        _bump_version([*ps, *ms])  # written through pointers: tell autograd, as in-place ops would
    return True
