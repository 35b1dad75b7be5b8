"""Tests of the counter-based Gaussian noise (flatminima._fastrand, flatminima.optim._noise) and of its use
in EntropySGD.

Oracles: a numpy re-implementation of the streams (SplitMix64 split + Box-Muller in float64 on the very
same integers), which the kernel must match to float accuracy; bit-for-bit equality of the SIMD paths
and of pieces computed at offsets; moments, Kolmogorov-Smirnov and correlations on ~2M draws at 5 standard
errors (checked to reject a constant, a uniform and a correlated stream); torch's own ops for the fallback.
The fused SGLD step (sgld_step): EntropySGD's multi-tensor sequence (torch._foreach_* ops + add_normal) to
float round-off, add_normal's noise bit for bit, identical bits on every SIMD path and at offsets; and
EntropySGD trajectories with the fused step against the multi-tensor path (the fallback, forced).
"""

from __future__ import annotations

import copy
import io
import math
import threading

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from flatminima.errors import ConfigError
from flatminima.optim import EntropySGD
from flatminima.optim import _noise
from flatminima.optim._noise import NoiseSource, fast_available, fast_preferred
from flatminima.train import MinibatchClosure, MinibatchStream, per_example_loss

torch.set_num_threads(1)
F = _noise._fastrand
needs_kernel = pytest.mark.skipif(not fast_available(), reason="flatminima._fastrand is not built")
N_STAT = 1 << 21  # draws for the statistical checks

# ------------------------------------------------------------------------------------------ reference streams
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def mix_gamma(z: int) -> int:
    z = ((z ^ (z >> 33)) * 0xFF51AFD7ED558CCD) & M64
    z = ((z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53) & M64
    z = (z ^ (z >> 33)) | 1
    return z ^ 0xAAAAAAAAAAAAAAAA if bin(z ^ (z >> 1)).count("1") < 24 else z


def stream(key: int, counter: int, dtype: int = 0) -> tuple[int, int]:
    b = mix64(key ^ 0xD1B54A32D192ED03 if dtype else key)
    return mix64((b + (2 * counter + 1) * GOLDEN) & M64), mix_gamma((b + (2 * counter + 2) * GOLDEN) & M64)


def mix64_np(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _layout(cos: np.ndarray, sin: np.ndarray, n: int) -> np.ndarray:
    """Pairs -> elements: group g holds pairs 16g..16g+15, cosines first, then sines."""
    g = cos.size // 16
    out = np.empty((g, 32))
    out[:, :16] = cos.reshape(g, 16)
    out[:, 16:] = sin.reshape(g, 16)
    return out.ravel()[:n]


def reference_f32(key: int, counter: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n values of the float32 stream in float64 from the same integers, and their radii."""
    seed, gamma = stream(key, counter)
    j = np.arange(16 * -(-n // 32), dtype=np.uint64)
    z = mix64_np(np.uint64(seed) + j * np.uint64(gamma))
    r = np.sqrt(-2.0 * np.log(((z >> np.uint64(40)).astype(np.float64) + 1.0) / 2**24))
    c = (z & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    t = 2 * np.pi * (c >> np.uint32(28)).astype(np.float64) / 16 + _angle_rest(c) * (2 * np.pi / 2**36)
    return _layout(r * np.cos(t), r * np.sin(t), n), _layout(r, r, n)


def _angle_rest(c: np.ndarray) -> np.ndarray:
    """The low 28 bits of the angle word as a signed number times 16, rounded to float32 as the kernel does."""
    return (c << np.uint32(4)).view(np.int32).astype(np.float32).astype(np.float64)


def reference_f64(key: int, counter: int, n: int) -> np.ndarray:
    seed, gamma = stream(key, counter, dtype=1)
    j = np.arange(16 * -(-n // 32), dtype=np.uint64)
    z1 = mix64_np(np.uint64(seed) + (2 * j) * np.uint64(gamma))
    z2 = mix64_np(np.uint64(seed) + (2 * j + np.uint64(1)) * np.uint64(gamma))
    r = np.sqrt(-2.0 * np.log(1.0 - (z1 >> np.uint64(12)).astype(np.float64) / 2**52))
    t = 2 * np.pi * ((z2 >> np.uint64(12)).astype(np.float64) / 2**52)
    return _layout(r * np.cos(t), r * np.sin(t), n)


def kernel(n: int, key: int, counter: int, dtype=torch.float32, offset: int = 0, scale: float = 1.0,
           isa: int = -1, base: torch.Tensor | None = None) -> torch.Tensor:
    x = torch.zeros(n, dtype=dtype) if base is None else base.clone()
    F.add_normal(x.data_ptr(), n, 0 if dtype == torch.float32 else 1, scale, key, counter, offset, isa)
    return x


# ------------------------------------------------------------------------------------------ statistics
def normal_failures(x, z: float = 5.0) -> list[str]:
    """The checks an iid N(0, 1) sample fails at z standard errors (KS at p < 1e-3)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    m = x.mean()
    c = x - m
    v = (c * c).mean()
    skew = (c**3).mean() / v**1.5 if v > 0 else math.nan
    kurt = (c**4).mean() / v**2 if v > 0 else math.nan
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1] if v > 0 else math.nan
    checks = {
        "mean": abs(m) <= z / math.sqrt(n),
        "variance": abs(v - 1) <= z * math.sqrt(2 / n),
        "skewness": abs(skew) <= z * math.sqrt(6 / n),
        "kurtosis": abs(kurt - 3) <= z * math.sqrt(24 / n),
        "kolmogorov-smirnov": stats.kstest(x, "norm").pvalue >= 1e-3,
        "lag-1 correlation": abs(lag1) <= z / math.sqrt(n),
    }
    return [name for name, ok in checks.items() if not ok]  # NaN compares False: counts as a failure


def uncorrelated(a, b, z: float = 5.0) -> bool:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return abs(np.corrcoef(a, b)[0, 1]) <= z / math.sqrt(a.size)


def test_the_statistical_checks_reject_broken_generators():
    rng = np.random.default_rng(0)
    good = rng.standard_normal(N_STAT)
    assert normal_failures(good) == []
    n = 1 << 18  # smaller samples suffice to reject these
    assert "variance" in normal_failures(np.full(n, 0.3))  # a constant stream
    uniform = rng.uniform(-math.sqrt(3), math.sqrt(3), n)  # mean 0, variance 1, but not normal
    assert {"kurtosis", "kolmogorov-smirnov"} <= set(normal_failures(uniform))
    smooth = (good[:n] + good[1 : n + 1]) / math.sqrt(2)  # normal marginals, correlated neighbours
    assert normal_failures(smooth) == ["lag-1 correlation"]
    assert not uncorrelated(good, good) and not uncorrelated(good[:n], smooth)
    assert uncorrelated(good, rng.standard_normal(N_STAT))


# ------------------------------------------------------------------------------------------ the kernel
@needs_kernel
def test_stream_split_matches_the_reference():
    for key, counter in ((0, 0), (1, 0), (0, 1), (12345, 678), (M64, M64), (2**63, 3)):
        for dtype in (0, 1):
            seed, gamma = F._stream(key, counter, dtype)
            assert (seed, gamma) == stream(key, counter, dtype)
            assert gamma & 1 and bin(gamma ^ (gamma >> 1)).count("1") >= 24
    assert len({F._stream(k, c)[1] for k in range(20) for c in range(50)}) == 1000  # a gamma per stream


@needs_kernel
def test_float32_kernel_matches_float64_box_muller_on_the_same_integers():
    n = 1 << 20
    x = kernel(n, key=3, counter=4).numpy()
    ref, r = reference_f32(3, 4, n)
    err = np.abs(x - ref)
    # measured: max |err| / r = 1.96e-7 (about 1.6 float32 ulp relative), max |err| = 6.2e-7
    assert (err <= 3e-7 * r + 1e-12).all(), (err / np.maximum(r, 1e-30)).max()
    assert np.abs(x).max() <= math.sqrt(48 * math.log(2)) + 1e-6  # the documented cut-off, 5.768


@needs_kernel
def test_float64_kernel_matches_box_muller_on_the_same_integers():
    n = 1 << 18
    x = kernel(n, key=11, counter=2, dtype=torch.float64).numpy()
    err = np.abs(x - reference_f64(11, 2, n))
    assert err.max() <= 8e-15, err.max()  # measured 2.7e-15 (a few ulp at |z| ~ 5)


@needs_kernel
def test_log_and_sincos_accuracy_on_dense_grids():
    """The float32 path's -2 ln u1 and cos / sin t against numpy in float64.

    Measured: -2 ln u1 relative error <= 9.5e-8 (1.13 ulp), exactly 0 at u1 = 1; |cos, sin error| <= 9.7e-8.
    """
    a = np.unique(np.concatenate([np.arange(0, 2**24, 13), np.arange(2**16), np.arange(2**24 - 2**16, 2**24)]))
    a = a.astype(np.uint32)
    c = np.random.default_rng(1).integers(0, 2**32, a.size, dtype=np.uint64).astype(np.uint32)
    c[: 1 << 20] = (np.arange(1 << 20, dtype=np.uint64) << np.uint64(12)).astype(np.uint32)  # every 4096th word
    L, ct, st = (np.empty(a.size, np.float32) for _ in range(3))
    F._probe_f32(a.ctypes.data, c.ctypes.data, L.ctypes.data, ct.ctypes.data, st.ctypes.data, a.size)
    want = -2.0 * np.log((a.astype(np.float64) + 1.0) / 2**24)
    pos = want > 0
    assert L[-1] == 0.0 and not pos[-1]  # u1 = 1
    assert (L >= 0).all()
    rel = np.abs(L[pos] - want[pos]) / want[pos]
    assert rel.max() <= 1.5e-7, rel.max()
    t = 2 * np.pi * (c >> np.uint32(28)).astype(np.float64) / 16 + _angle_rest(c) * (2 * np.pi / 2**36)
    assert np.abs(ct - np.cos(t)).max() <= 1.5e-7 and np.abs(st - np.sin(t)).max() <= 1.5e-7
    assert np.abs(ct.astype(np.float64) ** 2 + st.astype(np.float64) ** 2 - 1).max() <= 3e-7
    with pytest.raises(ValueError, match="2\\*\\*24"):
        bad = np.array([1 << 24], np.uint32)
        F._probe_f32(bad.ctypes.data, c.ctypes.data, L.ctypes.data, ct.ctypes.data, st.ctypes.data, 1)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_is_reproducible_and_a_pure_function_of_key_counter_index(dtype):
    n = 100_003
    full = kernel(n, 7, 9, dtype)
    assert torch.equal(full, kernel(n, 7, 9, dtype))  # the same (key, counter): the same bits
    # pieces at offsets (cut inside groups, odd lengths) give the same bits as the whole
    cuts = [0, 1, 5, 31, 32, 33, 95, 1000, 4097, 50_001, n]
    pieces = torch.zeros(n, dtype=dtype)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        part = pieces[lo:hi]
        F.add_normal(part.data_ptr(), hi - lo, 0 if dtype == torch.float32 else 1, 1.0, 7, 9, lo)
    assert torch.equal(pieces, full)
    # every SIMD path gives the same bits (explicit FMAs, no contraction)
    for isa in range(len(F.ISAS)):
        assert torch.equal(kernel(n, 7, 9, dtype, isa=isa), full), F.ISAS[isa]
        assert torch.equal(kernel(77, 7, 9, dtype, offset=13, isa=isa), full[13:90])
    # scale, and adding to existing values
    base = torch.linspace(-1, 1, n, dtype=dtype)
    scaled = kernel(n, 7, 9, dtype, scale=0.25, base=base)
    assert torch.allclose(scaled, base + 0.25 * full, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14)
    assert torch.equal(kernel(n, 7, 9, dtype, scale=0.0, base=base), base)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_draws_are_standard_normal(dtype):
    x = kernel(N_STAT, 2024, 0, dtype).numpy()
    assert normal_failures(x) == []
    g = x[: N_STAT // 32 * 32].reshape(-1, 32)
    cos, sin = g[:, :16].ravel(), g[:, 16:].ravel()  # the two halves of each Box-Muller pair
    assert uncorrelated(cos, sin) and uncorrelated(cos**2, sin**2)  # independent, not only uncorrelated
    assert uncorrelated(x[:-16], x[16:]) and uncorrelated(x[:-32], x[32:])


@needs_kernel
def test_streams_of_other_counters_keys_and_dtypes_are_independent():
    a = kernel(N_STAT, 5, 100).numpy()
    assert uncorrelated(a, kernel(N_STAT, 5, 101).numpy())  # the next counter
    assert uncorrelated(a, kernel(N_STAT, 6, 100).numpy())  # the next key
    assert uncorrelated(a, kernel(N_STAT, 5, 100, torch.float64).numpy())  # the float64 family
    assert uncorrelated(a[: N_STAT // 2], a[N_STAT // 2 :])
    assert not uncorrelated(a, kernel(N_STAT, 5, 100).numpy())  # (the check sees a reused stream)
    shifted = [kernel(4096, 5, c).numpy() for c in range(64)]
    assert len({s.tobytes() for s in shifted}) == 64


@needs_kernel
def test_kernel_arguments_are_checked():
    x = torch.zeros(10)
    with pytest.raises(ValueError, match="dtype"):
        F.add_normal(x.data_ptr(), 10, 2, 1.0, 0, 0)
    with pytest.raises(ValueError, match="key"):
        F.add_normal(x.data_ptr(), 10, 0, 1.0, -1, 0)
    with pytest.raises(ValueError, match="counter"):
        F.add_normal(x.data_ptr(), 10, 0, 1.0, 0, 2**64)
    with pytest.raises(ValueError, match=">= 0"):
        F.add_normal(x.data_ptr(), -1, 0, 1.0, 0, 0)
    with pytest.raises(ValueError, match="isa"):
        F.add_normal(x.data_ptr(), 10, 0, 1.0, 0, 0, 0, len(F.ISAS))
    F.add_normal(0, 0, 0, 1.0, 0, 0)  # nothing to do
    assert F.ISA == F.ISAS[-1] and F.ISAS[0] == "generic"


@needs_kernel
def test_kernel_releases_the_gil_and_is_thread_safe():
    n = 1 << 20
    want = [kernel(n, 1, c) for c in range(4)]
    got = [torch.zeros(n) for _ in range(4)]
    threads = [threading.Thread(target=F.add_normal, args=(g.data_ptr(), n, 0, 1.0, 1, c)) for c, g in enumerate(got)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(got, want))


# ------------------------------------------------------------------------------------------ NoiseSource
def _params(dtype=torch.float32):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).to(dtype)
    return [p.detach().clone() for p in m.parameters()]


@needs_kernel
def test_noise_source_uses_the_kernel_over_the_concatenated_tensors():
    ts = _params()
    flat = torch.cat([t.ravel() for t in ts])
    src = NoiseSource(42, backend="fast")
    assert src.fast and src.state() == {"key": 42, "counter": 0}
    ptrs = [t.data_ptr() for t in ts]
    src.add_(ts, 0.1)
    assert src.state() == {"key": 42, "counter": 1} and [t.data_ptr() for t in ts] == ptrs  # in place
    want = kernel(flat.numel(), 42, 0, scale=0.1, base=flat)
    assert torch.equal(torch.cat([t.ravel() for t in ts]), want)
    before = [t.clone() for t in ts]
    src.add_(ts, 0.1)  # the next call: the next counter
    assert all(not torch.equal(a, b) for a, b in zip(ts, before))


def test_torch_backend_is_torch_randn_added_in_place():
    ts = [torch.ones(3, 4), torch.zeros(5, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float16),
          torch.arange(6.0).reshape(2, 3)]
    before = [t.clone() for t in ts]
    ptrs = [t.data_ptr() for t in ts]
    src = NoiseSource(9, backend="torch")
    assert not src.fast
    src.add_(ts, 0.5)
    assert [t.data_ptr() for t in ts] == ptrs
    assert [(t.shape, t.dtype) for t in ts] == [(b.shape, b.dtype) for b in before]
    # one generator per device, seeded from the state; one flat draw per dtype in order of first appearance
    gen = torch.Generator().manual_seed(src._torch_seed(0, torch.device("cpu")))
    for dtype, idx in {torch.float32: [0, 3], torch.float64: [1], torch.float16: [2]}.items():
        flat = torch.randn(sum(before[i].numel() for i in idx), generator=gen, dtype=dtype)
        for i, z in zip(idx, flat.split([before[i].numel() for i in idx])):
            assert torch.equal(ts[i], before[i].clone().add_(z.view_as(before[i]), alpha=0.5))
    assert src.state()["counter"] == 1


def test_torch_backend_never_reuses_a_cpu_seed():
    """torch's CPU generator keeps 32 bits of a seed: the per-call seeds must not collide (a hash would)."""
    cpu = torch.device("cpu")
    for key in (0, 1, 2**40 + 3):
        src = NoiseSource(key, backend="torch")
        seeds = np.array([src._torch_seed(c, cpu) for c in range(200_000)], dtype=np.uint64)
        assert seeds.max() < 2**32 and np.unique(seeds).size == seeds.size
    g = torch.Generator()
    assert torch.equal(torch.randn(4, generator=g.manual_seed(5)), torch.randn(4, generator=g.manual_seed(5 + 2**32)))
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)  # 64-bit seeds, one stream per device
    assert len({src._torch_seed(c, d) for c in range(1000) for d in (cuda0, cuda1)}) == 2000


def test_torch_backend_draws_are_standard_normal_and_fresh():
    src = NoiseSource(3, backend="torch")
    a, b = torch.zeros(N_STAT), torch.zeros(N_STAT)
    src.add_([a], 1.0)
    src.add_([b], 1.0)
    assert normal_failures(a.numpy()) == [] and uncorrelated(a.numpy(), b.numpy())


@needs_kernel
def test_auto_backend_sends_what_the_kernel_cannot_take_to_torch():
    nc = torch.zeros(4, 6).t()  # not contiguous
    half = torch.zeros(8, dtype=torch.float16)
    ok = torch.zeros(50)
    src = NoiseSource(5, backend="fast")
    src.add_([nc, half, ok], 2.0)
    # the contiguous float32 tensor: kernel, at its offset in the concatenation (24 + 8 elements before it)
    assert torch.equal(ok, kernel(50, 5, 0, offset=32, scale=2.0))
    gen = torch.Generator().manual_seed(src._torch_seed(0, torch.device("cpu")))
    assert torch.equal(nc, torch.zeros(4, 6).t().add_(torch.randn(24, generator=gen).view(6, 4), alpha=2.0))
    assert half.abs().sum() > 0


def test_environment_variable_and_backend_argument_force_torch(monkeypatch):
    monkeypatch.setenv(_noise.ENV_VAR, "torch")
    forced = NoiseSource(1)
    assert not forced.fast
    monkeypatch.delenv(_noise.ENV_VAR)
    x, y = torch.zeros(100), torch.zeros(100)
    forced.add_([x], 1.0)
    NoiseSource(1, backend="torch").add_([y], 1.0)
    assert torch.equal(x, y)
    assert NoiseSource(1).fast == fast_preferred() == (fast_available() and F.ISA != "generic")
    if fast_available():
        monkeypatch.setenv(_noise.ENV_VAR, "torch")
        assert NoiseSource(1, backend="fast").fast  # "fast" overrides the environment
        monkeypatch.delenv(_noise.ENV_VAR)
    with pytest.raises(ConfigError, match="backend"):
        NoiseSource(1, backend="numpy")
    with pytest.raises(ConfigError, match="seed"):
        NoiseSource(1.5)
    if not fast_available():
        with pytest.raises(ConfigError, match="not built"):
            NoiseSource(1, backend="fast")


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_noise_source_state_round_trips_as_plain_ints(backend):
    src = NoiseSource(-1, backend=backend)  # keys are taken modulo 2**64
    assert src.key == M64
    x = torch.zeros(1000)
    src.add_([x], 1.0)
    buf = io.BytesIO()
    torch.save(src.state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state == {"key": M64, "counter": 1} and all(type(v) is int for v in state.values())
    want = x.clone()
    src.add_([want], 1.0)
    other = NoiseSource(0, backend=backend)
    other.load_state(state)
    got = x.clone()
    other.add_([got], 1.0)
    assert torch.equal(got, want)
    clone = copy.deepcopy(other)
    a, b = torch.zeros(10), torch.zeros(10)
    clone.add_([a], 1.0)
    other.add_([b], 1.0)
    assert torch.equal(a, b)
    for bad in ({"key": 1}, {"key": -1, "counter": 0}, {"key": 1, "counter": 2**64}, {"key": 1.0, "counter": 0}, None):
        with pytest.raises(ConfigError):
            other.load_state(bad)


# ------------------------------------------------------------------------------------------ fused SGLD step
needs_simd = pytest.mark.skipif(not fast_preferred(), reason="the fused step needs the kernel with a SIMD path")
SIZE_LISTS = [[1], [7], [31, 33], [32, 64, 5], [1000, 17, 4099], [(5, 33), (37,), (64, 3), (100_003,)]]
COEFS = [  # lr, weight_decay, gamma, weight (mu's lerp weight)
    (0.05, 1e-3, 0.3, 0.75),
    (0.1, 0.0, 0.0, 0.25),  # no pull, no decay: skipped terms
    (0.01, 0.0, 2.0, 1.0),  # mu = p exactly
    (0.2, 5e-4, 0.0, 0.5),
]


def _sgld_inputs(shapes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    gs = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    xs = [p + 0.1 * torch.randn(p.shape, generator=g, dtype=dtype) for p in ps]
    ms = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    return ps, gs, xs, ms


def fused_step(ps, gs, xs, ms, coefs, scale, key=0, counter=0, isa=-1, offset=0):
    """The kernel's fused step on copies of ps, ms (the tensors concatenated from ``offset`` on)."""
    ps, ms = [p.clone() for p in ps], [m.clone() for m in ms]
    entries = []
    for p, g, x, m in zip(ps, gs, xs, ms):
        entries.append((0 if p.dtype == torch.float32 else 1, p.numel(), offset, p.data_ptr(), g.data_ptr(),
                        x.data_ptr(), m.data_ptr()))
        offset += p.numel()
    F.sgld_step(entries, *coefs, scale, key, counter, isa)
    return ps, ms


def foreach_step(ps, gs, xs, ms, coefs, scale, key=0, counter=0):
    """EntropySGD's multi-tensor inner step (its fallback path, without momentum), on copies."""
    lr, wd, gam, w = coefs
    ps, ms, gs = [p.clone() for p in ps], [m.clone() for m in ms], [g.clone() for g in gs]
    if wd:
        torch._foreach_add_(gs, ps, alpha=wd)
    if gam:
        torch._foreach_add_(gs, ps, alpha=gam)
        torch._foreach_add_(gs, xs, alpha=-gam)
    torch._foreach_add_(ps, gs, alpha=-lr)
    if scale:
        src = NoiseSource(key, backend="fast")
        src.counter = counter
        src.add_(ps, scale)
    torch._foreach_lerp_(ms, ps, w)
    return ps, ms


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.0, 0.03])
def test_fused_sgld_step_equals_the_multi_tensor_sequence(dtype, scale):
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for shapes in SIZE_LISTS:
        ps, gs, xs, ms = _sgld_inputs(shapes, dtype)
        for coefs in COEFS:
            got_p, got_m = fused_step(ps, gs, xs, ms, coefs, scale, key=17, counter=5)
            want_p, want_m = foreach_step(ps, gs, xs, ms, coefs, scale, key=17, counter=5)
            for a, b in zip(got_p + got_m, want_p + want_m):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol)
            if coefs[3] == 1.0:
                assert all(torch.equal(m, p) for m, p in zip(got_m, got_p))  # torch.lerp's formula: exact at w = 1
            for isa in range(len(F.ISAS)):  # every path gives the same bits
                p_isa, m_isa = fused_step(ps, gs, xs, ms, coefs, scale, key=17, counter=5, isa=isa)
                assert all(torch.equal(a, b) for a, b in zip(p_isa + m_isa, got_p + got_m)), F.ISAS[isa]
        fresh = _sgld_inputs(shapes, dtype)  # the gradients and anchors are only read
        assert all(torch.equal(a, b) for a, b in zip(gs + xs, fresh[1] + fresh[2]))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_sgld_step_adds_exactly_the_noise_of_add_normal(dtype):
    shapes = SIZE_LISTS[-1]
    ps, gs, xs, ms = _sgld_inputs(shapes, dtype, seed=1)
    coefs = (0.05, 1e-3, 0.3, 0.75)
    for isa in range(len(F.ISAS)):
        noisy, _ = fused_step(ps, gs, xs, ms, coefs, 0.02, key=9, counter=4, isa=isa)
        quiet, _ = fused_step(ps, gs, xs, ms, coefs, 0.0, key=9, counter=4, isa=isa)
        src = NoiseSource(9, backend="fast")
        src.counter = 4
        src.add_(quiet, 0.02)  # the same stream, positions counted over the concatenation
        assert all(torch.equal(a, b) for a, b in zip(noisy, quiet)), F.ISAS[isa]
    # no gradient, no pull, no decay: the step is p + scale xi, bit for bit add_normal's
    zeros = [torch.zeros_like(g) for g in gs]
    got, _ = fused_step(ps, zeros, xs, ms, (0.05, 0.0, 0.0, 0.75), 0.02, key=9, counter=4)
    want = [p.clone() for p in ps]
    src = NoiseSource(9, backend="fast")
    src.counter = 4
    src.add_(want, 0.02)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # pieces of one tensor at offsets (cut inside groups) give the bits of the whole
    whole_p, whole_m = fused_step(ps[-1:], gs[-1:], xs[-1:], ms[-1:], coefs, 0.02, key=9, counter=4)
    cuts = [0, 1, 5, 31, 32, 33, 95, 1000, 4097, 50_001, 100_003]
    parts = [[t[lo:hi] for lo, hi in zip(cuts[:-1], cuts[1:])] for t in (ps[-1], gs[-1], xs[-1], ms[-1])]
    for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        pp, pm = fused_step(*[[part[k]] for part in parts], coefs, 0.02, key=9, counter=4, offset=lo)
        assert torch.equal(pp[0], whole_p[0][lo:hi]) and torch.equal(pm[0], whole_m[0][lo:hi])


@needs_kernel
def test_fused_sgld_step_arguments_are_checked():
    p = torch.zeros(10)
    e = (0, 10, 0, p.data_ptr(), p.data_ptr(), p.data_ptr(), p.data_ptr())
    F.sgld_step([], 0.1, 0.0, 0.0, 1.0, 0.0, 0, 0)  # nothing to do
    F.sgld_step([(0, 0, 0, 0, 0, 0, 0)], 0.1, 0.0, 0.0, 1.0, 1.0, 0, 0)  # empty entries may have NULL addresses
    with pytest.raises(ValueError, match="dtype"):
        F.sgld_step([(2, *e[1:])], 0.1, 0.0, 0.0, 1.0, 0.0, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        F.sgld_step([(0, -1, *e[2:])], 0.1, 0.0, 0.0, 1.0, 0.0, 0, 0)
    with pytest.raises(ValueError, match="NULL"):
        F.sgld_step([(*e[:4], 0, *e[5:])], 0.1, 0.0, 0.0, 1.0, 0.0, 0, 0)
    with pytest.raises(TypeError, match="tuples"):
        F.sgld_step([list(e)], 0.1, 0.0, 0.0, 1.0, 0.0, 0, 0)
    with pytest.raises(TypeError):
        F.sgld_step(5, 0.1, 0.0, 0.0, 1.0, 0.0, 0, 0)
    with pytest.raises(ValueError, match="counter"):
        F.sgld_step([e], 0.1, 0.0, 0.0, 1.0, 0.0, 0, -1)
    with pytest.raises(ValueError, match="isa"):
        F.sgld_step([e], 0.1, 0.0, 0.0, 1.0, 0.0, 0, 0, len(F.ISAS))
    assert torch.equal(p, torch.zeros(10))  # nothing ran
    assert F.VERSION == _noise.KERNEL_VERSION


@needs_simd
def test_sgld_step_wrapper_takes_a_plan_and_falls_back_without_changing_anything(monkeypatch):
    shapes = [(5, 33), (0,), (37,)]
    ps, gs, xs, ms = _sgld_inputs(shapes, torch.float32)
    coefs = dict(lr=0.05, weight_decay=1e-3, gamma=0.3, weight=0.75)
    plan = _noise.sgld_plan(ps, xs, ms)
    assert [row[0] for row in plan] == [0, 2]  # the empty tensor is skipped, its offset counted (0 elements)
    want_p, want_m = fused_step(ps, gs, xs, ms, tuple(coefs.values()), 0.1, key=3, counter=0)
    src = NoiseSource(3)
    versions = [t._version for t in ps + ms]
    assert _noise.sgld_step_(plan, ps, gs, ms, scale=0.1, source=src, **coefs)
    assert all(torch.equal(a, b) for a, b in zip(ps + ms, want_p + want_m))
    assert src.counter == 1 and all(t._version > v for t, v in zip(ps + ms, versions))
    # no source: no noise, the scale is ignored
    quiet_p, quiet_m = fused_step(ps, gs, xs, ms, tuple(coefs.values()), 0.0)
    assert _noise.sgld_step_(plan, ps, gs, ms, scale=0.1, **coefs)
    assert all(torch.equal(a, b) for a, b in zip(ps + ms, quiet_p + quiet_m))
    # what the kernel cannot take: nothing is changed, the counter does not move, False
    before = [t.clone() for t in ps + ms]
    bad_grads = [gs[0].t().contiguous().t(), gs[1], gs[2]]  # a transposed (non-contiguous) gradient
    assert not _noise.sgld_step_(plan, ps, bad_grads, ms, scale=0.1, source=src, **coefs)
    assert not _noise.sgld_step_(plan, ps, [gs[0].double(), gs[1], gs[2]], ms, scale=0.1, source=src, **coefs)
    assert not _noise.sgld_step_(plan, ps, gs, ms, scale=0.1, source=NoiseSource(3, backend="torch"), **coefs)
    moved = [ps[0].clone(), ps[1], ps[2]]  # a parameter whose storage is not the plan's
    assert not _noise.sgld_step_(plan, moved, gs, ms, scale=0.1, source=src, **coefs)
    assert src.counter == 1 and all(torch.equal(a, b) for a, b in zip(ps + ms, before))
    # plans only for contiguous CPU float32 / float64 tensors, with the kernel preferred
    assert _noise.sgld_plan([ps[0].t()], [xs[0].t()], [ms[0].t()]) is None
    assert _noise.sgld_plan([ps[2].half()], [xs[2].half()], [ms[2].half()]) is None
    assert _noise.sgld_plan([ps[2]], [xs[2][:10]], [ms[2]]) is None
    assert _noise.sgld_plan([ps[2]], [ps[2]], [ms[2]]) is None  # the anchor is the parameter itself
    monkeypatch.setenv(_noise.ENV_VAR, "torch")
    assert _noise.sgld_plan(ps, xs, ms) is None


# ------------------------------------------------------------------------------------------ EntropySGD
def _mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def _data(dtype, n=96):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def _closure(model, X, y):
    return MinibatchClosure(model, MinibatchStream(X, y, 16, seed=0), per_example_loss("cross_entropy"))


def _save_load(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("source", ["auto", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entropy_sgd_state_dict_round_trip_continues_identically(source, dtype):
    X, y = _data(dtype)

    def make(m):
        return EntropySGD(m.parameters(), lr=0.5, momentum=0.9, inner_steps=3, inner_lr=0.05, noise=1e-2, gamma=0.1,
                          scoping=0.05, seed=7, noise_source=source)

    m = _mlp(dtype)
    opt, c = make(m), _closure(m, X, y)
    for _ in range(4):
        opt.step(c)
    model_sd, opt_sd, stream_sd = copy.deepcopy(m.state_dict()), _save_load(opt.state_dict()), c.stream.state_dict()
    assert ("noise_source" in opt_sd) == (source == "auto")
    if source == "auto":
        assert opt_sd["noise_source"] == {"key": 7, "counter": 4 * 3}  # one draw per inner step and group
    for _ in range(5):
        opt.step(c)
    want = [p.detach().clone() for p in m.parameters()]

    m2 = _mlp(dtype, seed=123)
    m2.load_state_dict(model_sd)
    opt2, c2 = make(m2), _closure(m2, X, y)
    opt2.load_state_dict(opt_sd)
    c2.stream.load_state_dict(stream_sd)
    for _ in range(5):
        opt2.step(c2)
    assert all(torch.equal(p.detach(), w) for p, w in zip(m2.parameters(), want))


def test_entropy_sgd_noise_is_the_sources_stream():
    """f = 0, gamma = 0, L = 1, alpha = 1, lr = 1, gscale off: x <- x + sqrt(eta') eps xi, xi from NoiseSource(seed)."""
    for dtype in (torch.float32, torch.float64):
        x = nn.Parameter(torch.zeros(1000, dtype=dtype))

        def closure():
            x.grad = torch.zeros_like(x)
            return torch.zeros(())

        opt = EntropySGD([x], lr=1.0, inner_steps=1, inner_lr=0.04, noise=0.1, alpha=1.0, gamma=0.0, scoping=0.0,
                         gscale=False, seed=5)
        opt.step(closure)
        want = torch.zeros(1000, dtype=dtype)
        NoiseSource(5).add_([want], math.sqrt(0.04) * 0.1)
        assert torch.equal(x.detach(), want)


def test_entropy_sgd_without_noise_draws_nothing_and_sources_agree():
    X, y = _data(torch.float32)
    runs = []
    for source in ("auto", "torch"):
        m = _mlp(torch.float32)
        opt = EntropySGD(m.parameters(), lr=0.5, momentum=0.9, inner_steps=3, inner_lr=0.05, noise=0.0, gamma=0.1,
                         noise_source=source)
        c = _closure(m, X, y)
        rng = torch.get_rng_state()
        for _ in range(3):
            opt.step(c)
        assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
        assert opt._source is None and "noise_source" not in opt.state_dict()
        runs.append([p.detach().clone() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_entropy_sgd_seedless_noise_is_keyed_by_the_global_rng():
    def run():
        torch.manual_seed(99)
        x = nn.Parameter(torch.zeros(300))

        def closure():
            x.grad = torch.zeros_like(x)
            return torch.zeros(())

        opt = EntropySGD([x], lr=1.0, inner_steps=2, noise=0.1, alpha=1.0, gamma=0.0, scoping=0.0, gscale=False)
        opt.step(closure)
        return x.detach().clone(), opt.state_dict()["noise_source"]

    (a, sa), (b, sb) = run(), run()
    assert torch.equal(a, b) and sa == sb and sa["counter"] == 2 and a.abs().sum() > 0


def test_entropy_sgd_noise_source_option_is_validated_and_table_still_works():
    x = nn.Parameter(torch.zeros(20000))

    def closure():
        x.grad = torch.zeros_like(x)
        return torch.zeros(())

    with pytest.raises(ConfigError, match="noise_source"):
        EntropySGD([x], lr=1.0, noise_source="numpy")
    opt = EntropySGD([x], lr=1.0, inner_steps=1, inner_lr=0.04, noise=0.1, alpha=1.0, gamma=0.0, scoping=0.0,
                     gscale=False, seed=1, noise_table=100000)
    opt.step(closure)
    assert float(x.detach().std()) == pytest.approx(0.02, rel=0.03) and opt._source is None


# ------------------------------------------------------------------------------------------ EntropySGD, fused step
def _count_fused_calls(monkeypatch):
    calls = []
    real = F.sgld_step

    def spy(*args, **kw):
        calls.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(F, "sgld_step", spy)
    return calls


ESGD_CONFIGS = {
    "paper": dict(lr=0.5, momentum=0.9, weight_decay=1e-3, inner_steps=3, inner_lr=0.05, noise=1e-2, gamma=0.1,
                  scoping=0.05, inner_weight_decay=1e-3, seed=7),
    "code": dict(lr=0.3, momentum=0.9, nesterov=True, inner_steps=4, inner_lr=0.02, noise=3e-2, alpha=0.3, gamma=0.05,
                 gamma_schedule="linear", scoping=0.5, averaging="code", noise_form="code", gscale=False, seed=1),
    "noiseless": dict(lr=0.5, inner_steps=3, inner_lr=0.05, noise=0.0, gamma=0.1, scoping=0.0, alpha=1.0),
}


def _esgd_run(dtype, config, fused, steps=4, groups=False):
    X, y = _data(dtype)
    m = _mlp(dtype)
    params = m.parameters()
    if groups:  # two groups: the second with its own step, noise and decay
        params = [{"params": m[0].parameters()},
                  {"params": m[2].parameters(), "inner_lr": 0.03, "noise": 0.0, "inner_weight_decay": 1e-2}]
    opt = EntropySGD(params, **ESGD_CONFIGS[config])
    opt._fused = fused
    c = _closure(m, X, y)
    losses = [float(opt.step(c)) for _ in range(steps)]
    return [p.detach().clone() for p in m.parameters()], opt, losses


@needs_simd
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", sorted(ESGD_CONFIGS))
@pytest.mark.parametrize("groups", [False, True])
def test_entropy_sgd_fused_trajectory_equals_the_multi_tensor_one(dtype, config, groups, monkeypatch):
    calls = _count_fused_calls(monkeypatch)
    got, opt_f, loss_f = _esgd_run(dtype, config, fused=True, groups=groups)
    n_fused = len(calls)
    want, opt_m, loss_m = _esgd_run(dtype, config, fused=False, groups=groups)
    inner = ESGD_CONFIGS[config]["inner_steps"]
    assert n_fused == 4 * inner * (2 if groups else 1) and len(calls) == n_fused  # one call per group and inner step
    # measured: max |difference| 3.0e-8 (float32), 1.1e-16 (float64) after 4 outer steps
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert loss_f == pytest.approx(loss_m, rel=tol * 10)
    sd_f, sd_m = opt_f.state_dict(), opt_m.state_dict()
    assert sd_f.get("noise_source") == sd_m.get("noise_source")  # the same draws of the same stream
    for key in ("anchor", "mu", "momentum_buffer"):
        for i in sd_m["state"]:
            if key in sd_m["state"][i]:
                torch.testing.assert_close(sd_f["state"][i][key], sd_m["state"][i][key], rtol=tol, atol=tol)
    d_f, d_m = opt_f.diagnostics(), opt_m.diagnostics()
    assert d_f.keys() == d_m.keys() and all(d_f[k] == pytest.approx(d_m[k], rel=1e-4, abs=tol) for k in d_f)


@needs_simd
def test_entropy_sgd_uses_the_multi_tensor_path_where_the_kernel_does_not_apply(monkeypatch):
    calls = _count_fused_calls(monkeypatch)
    base = dict(lr=0.5, inner_steps=2, inner_lr=0.05, noise=1e-2, gamma=0.1, seed=3)
    X, y = _data(torch.float32)
    cases = [  # (options, fused?)
        (dict(inner_momentum=0.5), False),
        (dict(noise_source="torch"), False),
        (dict(noise_table=10_000), False),
        (dict(noise=0.0, noise_source="torch"), True),  # no noise: the source does not matter
        (dict(noise=0.0, noise_table=10_000), True),
        ({}, True),
    ]
    for opts, fused in cases:
        m = _mlp(torch.float32)
        calls.clear()
        EntropySGD(m.parameters(), **{**base, **opts}).step(_closure(m, X, y))
        assert len(calls) == (2 if fused else 0), opts
        if not fused:
            continue
        want = _mlp(torch.float32)  # the same run on the multi-tensor path
        opt = EntropySGD(want.parameters(), **{**base, **opts})
        opt._fused = False
        opt.step(_closure(want, X, y))
        for a, b in zip(m.parameters(), want.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # a non-contiguous parameter sends its whole group to the multi-tensor path; the noise is the same
    def nc_run(fused):
        x = nn.Parameter(torch.linspace(-1, 1, 24).reshape(4, 6).t())  # not contiguous
        z = nn.Parameter(torch.linspace(0, 1, 50))

        def closure():
            x.grad, z.grad = x.detach() * 0.5, z.detach() ** 2
            return torch.zeros(())

        opt = EntropySGD([{"params": [x]}, {"params": [z]}], **base)
        opt._fused = fused
        for _ in range(2):
            opt.step(closure)
        return x.detach().clone(), z.detach().clone(), opt.state_dict()["noise_source"]

    calls.clear()
    xf, zf, sf = nc_run(True)
    assert len(calls) == 2 * 2  # only the contiguous group
    xm, zm, sm = nc_run(False)
    assert sf == sm and torch.equal(xf, xm)  # the same path for x
    torch.testing.assert_close(zf, zm, rtol=1e-6, atol=1e-7)
    monkeypatch.setenv(_noise.ENV_VAR, "torch")  # the escape hatch: no kernel at all
    calls.clear()
    m = _mlp(torch.float32)
    EntropySGD(m.parameters(), **{**base, "noise": 0.0}).step(_closure(m, X, y))
    assert calls == []
