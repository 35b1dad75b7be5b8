"""Local energy: how much the training error (or loss) rises under random perturbations of the weights.

    delta E(sigma) = E_z[ E(theta') ] - E(theta),   theta' = theta * (1 + sigma z)   (multiplicative, default)

with z ~ N(0, I) per weight (Pittorino et al., ICLR 2021). Options: ``kind="additive"`` (theta' = theta +
sigma z) and ``kind="filter"`` (one multiplicative factor per output unit / filter: every weight of row f
of a tensor is multiplied by 1 + sigma xi_f, xi_f ~ N(0, 1); each element of a 1-D tensor is its own
"filter").

Design
------
* All sigmas at once, with **common random numbers**: the same draws z are used for every sigma, and two
  calls with the same ``seed`` on models with the same parameter layout use the same z (so differences
  between models or sigmas are not blurred by independent noise).
* The K = len(sigmas) x n_samples perturbed copies go through ``landscape.batched_error`` /
  ``batched_loss`` (vmapped passes, chunked data). Draws are generated in fixed blocks of
  ``BLOCK`` samples, each from its own seeded generator, so results do not depend on the batch size.
* Standard errors: sample standard deviation over the draws / sqrt(n_samples), per sigma.
* BatchNorm policy (``bn``): the landscape evaluates models in eval mode, so BatchNorm uses its stored
  running statistics. ``bn="eval"`` perturbs every parameter (BN affine ones included) and keeps the
  running statistics; ``bn="exclude"`` leaves BatchNorm / LayerNorm / GroupNorm parameters unperturbed.
  (Recomputing the statistics per perturbed copy is not vmappable and is not offered.) The policy used
  is recorded in the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["LocalEnergy", "local_energy", "perturbation_mask", "filter_index", "perturb", "KINDS", "BLOCK"]

KINDS = ("multiplicative", "additive", "filter")
#: Samples drawn per seeded generator block (common random numbers independent of batching).
BLOCK = 16
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass
class LocalEnergy:
    """delta E on a grid of sigma.

    sigmas (S,); delta (S,) = mean perturbed energy - base; stderr (S,); base: E(theta);
    samples (S, n_samples): E at each perturbed copy (same draw j in every row).
    """

    sigmas: np.ndarray
    delta: np.ndarray
    stderr: np.ndarray
    base: float
    samples: np.ndarray
    kind: str
    measure: str
    bn: str
    seed: int

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d = {"sigmas": self.sigmas.tolist(), "delta": self.delta.tolist(), "stderr": self.stderr.tolist(),
             "base": self.base, "kind": self.kind, "measure": self.measure, "bn": self.bn, "seed": self.seed,
             "n_samples": int(self.samples.shape[1])}
        if samples:
            d["samples"] = self.samples.tolist()
        return d


def perturbation_mask(landscape, bn: str = "eval") -> Tensor:
    """(N,) 0/1 mask of the parameters that are perturbed under BatchNorm policy ``bn``."""
    if bn not in ("eval", "exclude"):
        raise ConfigError(f"bn must be 'eval' or 'exclude', got {bn!r}")
    mask = torch.ones(landscape.n_params, dtype=landscape.dtype, device=landscape.device)
    if bn == "exclude":
        norm_params = set()
        for mname, mod in landscape.model.named_modules():
            if isinstance(mod, _NORM_TYPES):
                norm_params |= {f"{mname}.{p}" if mname else p for p, _ in mod.named_parameters(recurse=False)}
        start = 0
        for name, n in zip(landscape.names, landscape.numels):
            if name in norm_params:
                mask[start : start + n] = 0
            start += n
    return mask


def filter_index(landscape) -> tuple[Tensor, int]:
    """(N,) index of the filter (row of the first dimension of each tensor) of every parameter, and the
    number of filters. 1-D tensors: one filter per element."""
    parts, offset = [], 0
    for shape, n in zip(landscape.shapes, landscape.numels):
        rows = shape[0] if len(shape) else 1
        per = n // rows
        parts.append(offset + torch.arange(rows).repeat_interleave(per))
        offset += rows
    return torch.cat(parts).to(landscape.device), offset


def _draws(seed: int, start: int, count: int, dim: int, dtype, device) -> Tensor:
    """Standard normal draws for samples [start, start + count), block-seeded: (count, dim)."""
    out = []
    b0 = start // BLOCK
    b1 = (start + count - 1) // BLOCK
    for b in range(b0, b1 + 1):
        g = torch.Generator()
        g.manual_seed(int(seed) * 1_000_003 + b)
        block = torch.randn(BLOCK, dim, generator=g, dtype=torch.float64)
        lo = max(start, b * BLOCK) - b * BLOCK
        hi = min(start + count, (b + 1) * BLOCK) - b * BLOCK
        out.append(block[lo:hi])
    return torch.cat(out).to(device=device, dtype=dtype)


def perturb(theta: Tensor, z: Tensor, sigmas: Tensor, kind: str, mask: Tensor,
            filt: Tensor | None = None) -> Tensor:
    """Perturbed copies (S, B, N) of theta (N,) for draws z (B, N) or (B, n_filters) and sigmas (S,)."""
    if kind == "filter":
        z = z[:, filt]
    z = z * mask
    s = sigmas[:, None, None]
    if kind == "additive":
        return theta + s * z
    return theta * (1 + s * z)


def local_energy(landscape, theta: Tensor | None = None, sigmas: Sequence[float] | Tensor = (0.05, 0.1, 0.2, 0.3),
                 n_samples: int = 100, kind: str = "multiplicative", measure: str = "error", seed: int = 0,
                 bn: str = "eval", batch: int = 64, budget: int | None = None, progress: bool = False) -> LocalEnergy:
    """delta E(sigma) for every sigma, from ``n_samples`` draws shared by all sigmas.

    Parameters
    ----------
    landscape : flatminima.Landscape (its data are the ones E is measured on, usually the training set).
    theta : (N,), default ``landscape.theta``.
    sigmas : (S,) noise strengths >= 0.
    kind : "multiplicative" | "additive" | "filter" (see the module docstring).
    measure : "error" (fraction misclassified) or "loss".
    seed : common random numbers: same seed and parameter layout give the same draws.
    bn : BatchNorm policy, "eval" or "exclude".
    batch : draws per vmapped pass (times S perturbed copies per pass, further split by ``budget``).
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    if measure not in ("error", "loss"):
        raise ConfigError(f"measure must be 'error' or 'loss', got {measure!r}")
    if n_samples < 2:
        raise ConfigError("n_samples must be >= 2 (for a standard error)")
    if batch < 1:
        raise ConfigError("batch must be positive")
    th = landscape.theta if theta is None else torch.as_tensor(theta)
    if th.shape != (landscape.n_params,):
        raise ConfigError(f"theta must have shape ({landscape.n_params},), got {tuple(th.shape)}")
    th = th.to(landscape.device, landscape.dtype)
    sig = torch.as_tensor(np.asarray(sigmas, dtype=float), dtype=landscape.dtype, device=landscape.device).reshape(-1)
    if sig.numel() == 0 or bool((sig < 0).any()) or not bool(torch.isfinite(sig).all()):
        raise ConfigError("sigmas must be a non-empty list of finite numbers >= 0")
    mask = perturbation_mask(landscape, bn)
    filt, n_filters = filter_index(landscape) if kind == "filter" else (None, landscape.n_params)
    fn = landscape.batched_error if measure == "error" else landscape.batched_loss
    base = float(fn(th[None], budget)[0])
    S = sig.shape[0]
    energies = torch.empty(S, n_samples, dtype=landscape.dtype, device=landscape.device)
    starts = range(0, n_samples, batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="local energy", unit="batch")
    for i in starts:
        b = min(batch, n_samples - i)
        z = _draws(seed, i, b, n_filters, landscape.dtype, landscape.device)
        P = perturb(th, z, sig, kind, mask, filt)  # (S, b, N)
        energies[:, i : i + b] = fn(P.reshape(S * b, -1), budget).reshape(S, b)
    e = energies.detach().cpu().double().numpy()
    delta = e.mean(1) - base
    stderr = e.std(1, ddof=1) / math.sqrt(n_samples)
    return LocalEnergy(sigmas=sig.cpu().double().numpy(), delta=delta, stderr=stderr, base=base, samples=e,
                       kind=kind, measure=measure, bn=bn, seed=int(seed))
