"""Local energy: how much the training error (or loss) rises under random perturbations of the weights.

    delta E(sigma) = E_z[ E(theta') ] - E(theta),   theta' = theta * (1 + sigma z)   (multiplicative, default)

with z ~ N(0, I) per weight (Pittorino et al., ICLR 2021). Options: ``kind="additive"`` (theta' = theta +
sigma z) and ``kind="filter"`` (one multiplicative factor per output unit / filter: every weight of row f
of a tensor is multiplied by 1 + sigma xi_f, xi_f ~ N(0, 1); each element of a 1-D tensor is its own
"filter").

Two estimators of the same expectation
--------------------------------------
* ``method="copies"`` (default): the definition. Each draw z_j perturbs the whole network, and E is the
  error of that perturbed network over the data. The K = len(sigmas) x n_samples perturbed copies go
  through ``landscape.batched_error`` / ``batched_loss`` (chunked data, one batched forward pass of the
  copies: :class:`~flatminima.forward.BatchedForward`). Draws come in
  fixed blocks of ``BLOCK`` samples, each from its own seeded generator (float32 draws, cast to the
  landscape's dtype), so results do not depend on the batch size or the dtype.
* ``method="lrt"``: the local reparameterisation trick (Kingma, Salimans & Welling 2015), exact in law for
  networks made only of ``nn.Linear`` layers and elementwise activations (the flatminima MLP). Given its
  input a, each example's pre-activations of a perturbed Linear layer are independent Gaussians, with
  mean a W^T + b and variance sigma^2 (a^2 (W^2)^T + b^2) (multiplicative), sigma^2 (|a|^2 + 1)
  (additive) or sigma^2 ((a W^T)^2 + b^2) (filter: the row factor multiplies the whole w_f . a). Sampling
  them layer by layer, independently per example, gives exactly each example's law of the perturbed
  network's output, hence (the error is a mean over examples) an unbiased estimate of E_z[E(theta')],
  the same expectation as ``copies``. The noise is independent across examples (copies share one weight
  draw across all examples), so the per-draw values and their spread differ: ``samples`` are not errors
  of perturbed networks, and the standard error is that of this estimator. The first layer's mean and
  variance are computed once for all draws; each draw then costs only Gaussian draws and the small
  later layers. ``method="auto"`` uses ``lrt`` where it is exact and expected to be faster (wide inputs:
  a copy costs fan_in x fan_out multiply-adds per example and layer, lrt one Gaussian draw per example
  and unit), ``copies`` elsewhere. The method used is recorded in the result.

Design
------
* All sigmas at once, with **common random numbers**: the same draws are used for every sigma, and two
  calls with the same ``seed`` on models with the same parameter layout (and, for ``lrt``, the same data)
  use the same draws (so differences between models or sigmas are not blurred by independent noise).
* Standard errors: sample standard deviation over the draws / sqrt(n_samples), per sigma.
* BatchNorm policy (``bn``): the landscape evaluates models in eval mode, so BatchNorm uses its stored
  running statistics. ``bn="eval"`` perturbs every parameter (BN affine ones included) and keeps the
  running statistics; ``bn="exclude"`` leaves BatchNorm / LayerNorm / GroupNorm parameters unperturbed.
  (Recomputing the statistics per perturbed copy is not vmappable and is not offered.) The policy used
  is recorded in the result.
* ``measure="loss"`` includes the landscape's ``l2 |theta'|^2`` term; ``lrt`` adds its exact expectation.
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

__all__ = ["LocalEnergy", "local_energy", "perturbation_mask", "filter_index", "perturb", "lrt_unsupported",
           "KINDS", "METHODS", "BLOCK", "EXAMPLE_BLOCK", "LRT_RATIO"]

KINDS = ("multiplicative", "additive", "filter")
METHODS = ("copies", "lrt", "auto")
#: Samples drawn per seeded generator block (common random numbers independent of batching).
BLOCK = 16
#: Examples per seeded generator block of the ``lrt`` draws: whole blocks are drawn and sliced, so the draws
#: of an example depend only on its index, not on how the data are cut into batches.
EXAMPLE_BLOCK = 256
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass
class LocalEnergy:
    """delta E on a grid of sigma.

    sigmas (S,); delta (S,) = mean perturbed energy - base; stderr (S,); base: E(theta);
    samples (S, n_samples): E under draw j (same draw j in every row): the energy of the perturbed copy
    j for ``method="copies"``, the mean over examples with independent per-example noise for ``"lrt"``.
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
    method: str = "copies"

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d = {"sigmas": self.sigmas.tolist(), "delta": self.delta.tolist(), "stderr": self.stderr.tolist(),
             "base": self.base, "kind": self.kind, "measure": self.measure, "bn": self.bn, "seed": self.seed,
             "method": self.method, "n_samples": int(self.samples.shape[1])}
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
    """Standard normal draws for samples [start, start + count), block-seeded: (count, dim).

    Drawn in float32 whatever ``dtype`` (cheaper, and a float32 and a float64 landscape see the same
    draws)."""
    out = []
    b0 = start // BLOCK
    b1 = (start + count - 1) // BLOCK
    for b in range(b0, b1 + 1):
        g = torch.Generator()
        g.manual_seed(int(seed) * 1_000_003 + b)
        block = torch.randn(BLOCK, dim, generator=g, dtype=torch.float32)
        lo = max(start, b * BLOCK) - b * BLOCK
        hi = min(start + count, (b + 1) * BLOCK) - b * BLOCK
        out.append(block[lo:hi])
    z = out[0] if len(out) == 1 else torch.cat(out)
    return z.to(device=device, dtype=dtype)


def perturb(theta: Tensor, z: Tensor, sigmas: Tensor, kind: str, mask: Tensor,
            filt: Tensor | None = None) -> Tensor:
    """Perturbed copies (S, B, N) of theta (N,) for draws z (B, N) or (B, n_filters) and sigmas (S,)."""
    if kind == "filter":
        z = z[:, filt]
    if not bool((mask == 1).all()):
        z = z * mask
    s = sigmas[:, None, None]
    if kind == "additive":
        return torch.addcmul(theta, s, z)
    return torch.addcmul(theta, theta * s, z)


def lrt_unsupported(landscape, kind: str = "multiplicative") -> str | None:
    """Why ``method="lrt"`` is not exact for this landscape and kind (a sentence), or None if it is."""
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    fwd = landscape.batched_forward
    if fwd.chain is None:
        return ("the local reparameterisation is exact only for networks made of nn.Linear layers and elementwise "
                f"activations; {type(landscape.model).__name__} has other layers (convolutions, normalisation, ...)")
    if fwd.chain_input(next(landscape.batches(1))[0]) is None:
        return "the inputs do not reach the first Linear layer as (examples, features) vectors"
    return None


#: ``method="auto"`` takes ``lrt`` when sum(fan_in * fan_out) >= LRT_RATIO * sum(fan_out) over the Linear layers.
LRT_RATIO = 200


def _lrt_is_cheaper(landscape) -> bool:
    """Per draw and example, a perturbed copy costs sum(fan_in * fan_out) multiply-adds, the local
    reparameterisation one Gaussian draw and a few elementwise operations per unit; a unit costs about as
    much as LRT_RATIO multiply-adds on a CPU, so lrt pays for wide inputs."""
    layers = [s.module for s in landscape.batched_forward.chain if s.kind == "linear"]
    macs = sum(m.in_features * m.out_features for m in layers)
    return macs >= LRT_RATIO * sum(m.out_features for m in layers)


def local_energy(landscape, theta: Tensor | None = None, sigmas: Sequence[float] | Tensor = (0.05, 0.1, 0.2, 0.3),
                 n_samples: int = 100, kind: str = "multiplicative", measure: str = "error", seed: int = 0,
                 bn: str = "eval", batch: int = 64, budget: int | None = None, progress: bool = False,
                 method: str = "copies") -> LocalEnergy:
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
    batch : draws per pass (times S perturbed copies per pass, further split by ``budget``).
    budget : (copies x examples) per pass (default: the landscape's, 131072).
    method : "copies" (perturbed networks, the definition), "lrt" (local reparameterisation: exact in law
        for Linear-and-elementwise networks, :class:`ConfigError` elsewhere) or "auto" (lrt where it is
        exact and expected to be faster: wide first layers, see ``LRT_RATIO``; copies elsewhere).
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    if measure not in ("error", "loss"):
        raise ConfigError(f"measure must be 'error' or 'loss', got {measure!r}")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
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
    why = lrt_unsupported(landscape, kind) if method != "copies" else None
    if method == "lrt" and why is not None:
        raise ConfigError(f"method='lrt' is not exact here: {why}")
    if method == "auto":
        method = "lrt" if why is None and _lrt_is_cheaper(landscape) else "copies"
    fn = landscape.batched_error if measure == "error" else landscape.batched_loss
    base = float(fn(th[None], budget)[0])
    if method == "lrt":
        energies = _lrt_energies(landscape, th, sig, n_samples, kind, measure, seed, mask, batch, budget, progress)
    else:
        energies = _copies_energies(landscape, th, sig, n_samples, kind, fn, seed, mask, batch, budget, progress)
    e = energies.detach().cpu().double().numpy()
    delta = e.mean(1) - base
    stderr = e.std(1, ddof=1) / math.sqrt(n_samples)
    return LocalEnergy(sigmas=sig.cpu().double().numpy(), delta=delta, stderr=stderr, base=base, samples=e,
                       kind=kind, measure=measure, bn=bn, seed=int(seed), method=method)


def _progress(it, progress: bool, total: int | None = None):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc="local energy", unit="pass", total=total)


def _copies_energies(landscape, th, sig, n_samples, kind, fn, seed, mask, batch, budget, progress) -> Tensor:
    filt, n_filters = filter_index(landscape) if kind == "filter" else (None, landscape.n_params)
    S = sig.shape[0]
    energies = torch.empty(S, n_samples, dtype=landscape.dtype, device=landscape.device)
    for i in _progress(range(0, n_samples, batch), progress):
        b = min(batch, n_samples - i)
        z = _draws(seed, i, b, n_filters, landscape.dtype, landscape.device)
        P = perturb(th, z, sig, kind, mask, filt)  # (S, b, N)
        energies[:, i : i + b] = fn(P.reshape(S * b, -1), budget).reshape(S, b)
    return energies


# ---------------------------------------------------------------------------------------------- lrt
def _lrt_layers(landscape, th: Tensor, mask: Tensor, kind: str) -> list[tuple]:
    """Per step of the chain: ("act" or "flatten", module) or ("linear", W, b, vw, vb) with vw, vb the
    weight and bias terms of the variance (W^2 and b^2 masked, the masks, or the row mask for "filter")."""
    fwd = landscape.batched_forward

    def value_and_mask(name: str | None) -> tuple[Tensor | None, Tensor | None]:
        if name is None:
            return None, None
        if name not in fwd.names:  # a frozen parameter: never perturbed
            p = fwd.param(th[None], name)
            return p, torch.zeros_like(p)
        return fwd.param(th[None], name)[0], fwd.param(mask[None], name)[0]

    out = []
    for step in fwd.chain:
        if step.kind != "linear":
            out.append((step.kind, step.module))
            continue
        W, mW = value_and_mask(step.weight)
        b, mb = value_and_mask(step.bias)
        if kind == "multiplicative":
            vw, vb = W * W * mW, (b * b * mb if b is not None else None)
        elif kind == "additive":
            vw, vb = mW, mb
        else:  # filter: the row factor multiplies w_f . a; the bias elements have their own factors
            vw, vb = mW.amax(dim=1), (b * b * mb if b is not None else None)
        out.append(("linear", W, b, vw, vb))
    return out


def _lrt_linear(a: Tensor, W: Tensor, b: Tensor | None, vw: Tensor, vb: Tensor | None,
                kind: str) -> tuple[Tensor, Tensor]:
    """Mean and variance / sigma^2 of the pre-activations of one perturbed Linear layer for inputs a (..., i)."""
    mw = a @ W.T
    if kind == "filter":
        var = mw * mw * vw
    else:
        var = (a * a) @ vw.T
    mean = mw + b if b is not None else mw
    if vb is not None:
        var = var + vb
    return mean, var


def _lrt_energies(landscape, th, sig, n_samples, kind, measure, seed, mask, batch, budget, progress) -> Tensor:
    from ..landscape import CHAIN_PASS_ELEMENTS, DEFAULT_BATCH_BUDGET, predictions_error

    layers = _lrt_layers(landscape, th, mask, kind)
    first = next(i for i, step in enumerate(layers) if step[0] == "linear")
    widths = [step[1].shape[0] for step in layers if step[0] == "linear"]
    per_fn = predictions_error if measure == "error" else landscape.loss_fn
    dt, dev = landscape.dtype, landscape.device
    S, P = sig.shape[0], landscape.n_examples
    # passes: pieces of data (whole example blocks for data held as tensors) x whole sample blocks, at most
    # ``budget`` (copies x examples) and CHAIN_PASS_ELEMENTS activations per pass
    budget = max(1, min(int(budget or DEFAULT_BATCH_BUDGET), CHAIN_PASS_ELEMENTS // max(widths)))
    e_step = max(1, budget // (S * BLOCK) // EXAMPLE_BLOCK) * EXAMPLE_BLOCK
    n_step = max(1, min(batch, budget // (S * min(landscape.n_local, e_step))) // BLOCK) * BLOCK
    energies = torch.zeros(S, n_samples, dtype=dt, device=dev)
    # a bar of passes (pieces x sample blocks; streamed batches may cut more pieces than counted)
    bar = _progress(None, progress, -(-landscape.n_local // e_step) * -(-n_samples // n_step))
    sigmas = sig.tolist()
    p0 = landscape.example_offset  # global index of the piece's first example: it seeds the draws
    for x, y in landscape.batches(e_step):
        p1 = p0 + x.shape[0]
        # first layer's mean and standard deviation: once per piece of data, shared by all draws
        _, W, b, vw, vb = layers[first]
        mean1, var1 = _lrt_linear(landscape.batched_forward.chain_input(x), W, b, vw, vb, kind)
        std1 = var1.clamp_(min=0).sqrt_()
        for i0 in range(0, n_samples, n_step):
            i1 = min(n_samples, i0 + n_step)
            eps = _lrt_draws(seed, i0, i1, p0, p1, widths, dt, dev)  # per Linear layer: (n, B, width)
            n, B = i1 - i0, p1 - p0
            h = _lrt_sample(mean1, eps[0].mul_(std1), sigmas)  # (S * n, B, width), draws shared by the sigmas
            li = 1
            for step in layers[first + 1 :]:
                if step[0] == "act":
                    h = step[1](h)
                elif step[0] == "linear":
                    _, W, b, vw, vb = step
                    mean, var = _lrt_linear(h, W, b, vw, vb, kind)
                    h = mean.view(S, n, B, -1).addcmul_(var.clamp_(min=0).sqrt_().view(S, n, B, -1),
                                                         eps[li] * sig.view(S, 1, 1, 1))
                    h = h.view(S * n, B, -1)
                    li += 1
            per = per_fn(h.reshape(S * n * B, *h.shape[2:]), y.repeat(S * n, *([1] * (y.dim() - 1))))
            energies[:, i0:i1] += per.view(S, n, B).sum(-1)
            if bar is not None:
                bar.update()
        p0 = p1
    if bar is not None:
        bar.close()
    energies = landscape.sum_over_processes(energies)[0]
    energies /= P
    if measure == "loss" and landscape.l2:
        sq = (th * th * mask).sum() if kind != "additive" else mask.sum()
        energies += (landscape.l2 * ((th * th).sum() + sig * sig * sq))[:, None]
    return energies


def _lrt_sample(mean: Tensor, noise: Tensor, sigmas: list[float]) -> Tensor:
    """mean (B, w) + sigma_s * noise (n, B, w) for every sigma: (S * n, B, w)."""
    out = torch.empty(len(sigmas), *noise.shape, dtype=noise.dtype, device=noise.device)
    for i, s in enumerate(sigmas):
        torch.add(mean, noise, alpha=s, out=out[i])
    return out.view(-1, *noise.shape[1:])


def _lrt_draws(seed: int, i0: int, i1: int, p0: int, p1: int, widths: list[int], dtype, device) -> list[Tensor]:
    """Standard normal pre-activation draws for samples [i0, i1) and examples [p0, p1): one (n, B, width)
    tensor per Linear layer. Each (sample block, example block) has its own seeded generator and is drawn
    whole, so the draws do not depend on how samples and examples are grouped into passes."""
    blocks_s = range(i0 // BLOCK, (i1 - 1) // BLOCK + 1)
    blocks_e = range(p0 // EXAMPLE_BLOCK, (p1 - 1) // EXAMPLE_BLOCK + 1)
    gens = {}
    for b in blocks_s:
        for e in blocks_e:
            g = torch.Generator()
            g.manual_seed(((int(seed) * 1_000_003 + b) * 1_000_033 + e) * 2 + 1)
            gens[b, e] = g
    out = []
    for w in widths:
        rows = []
        for b in blocks_s:
            cols = []
            for e in blocks_e:
                cols.append(torch.randn(BLOCK, EXAMPLE_BLOCK, w, generator=gens[b, e], dtype=torch.float32))
            rows.append(cols[0] if len(cols) == 1 else torch.cat(cols, 1))
        z = rows[0] if len(rows) == 1 else torch.cat(rows, 0)
        s0 = i0 - blocks_s[0] * BLOCK
        e0 = p0 - blocks_e[0] * EXAMPLE_BLOCK
        out.append(z[s0 : s0 + (i1 - i0), e0 : e0 + (p1 - p0)].to(device=device, dtype=dtype))
    return out
