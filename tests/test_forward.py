"""BatchedForward against its oracle: a Python loop of functional_call, one parameter vector at a time."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from flatminima.errors import ConfigError
from flatminima.forward import BatchedForward, is_elementwise
from flatminima.models import mlp
from flatminima.models.mlp import Erf


def loop(fwd, thetas, x, per_copy=False):
    """The oracle: copy k through functional_call with its own parameters (the rest: the model's own)."""
    outs = []
    for k, t in enumerate(thetas):
        p = {n: s.view(sh) for n, s, sh in zip(fwd.names, torch.split(t, fwd.numels), fwd.shapes)}
        outs.append(functional_call(fwd.model, p, ((x[k] if per_copy else x),)))
    return torch.stack(outs)


def chain_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 7), Erf(), nn.Sequential(nn.Linear(7, 5), nn.Softplus()),
                         nn.Linear(5, 3, bias=False)).double()


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()


def thetas_for(fwd, K=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, fwd.n_params, generator=g, dtype=torch.float64)


def test_chain_is_parsed_for_an_mlp_and_not_for_other_models():
    fwd = BatchedForward(chain_mlp())
    assert [s.kind for s in fwd.chain] == ["flatten", "linear", "act", "linear", "act", "linear"]
    assert fwd.width == 7
    assert BatchedForward(mlp(4, [5, 6], 2, activation="erf")).chain is not None  # the marker, not the name
    assert BatchedForward(conv_net()).chain is None
    lin = nn.Linear(4, 4)  # one layer used twice: shared weights, not a chain
    assert BatchedForward(nn.Sequential(lin, nn.Tanh(), lin)).chain is None
    assert BatchedForward(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))).chain is None
    assert not is_elementwise(nn.ReLU(inplace=True)) and not is_elementwise(nn.PReLU())

    class Erf2(nn.Module):  # a look-alike without the marker is not trusted
        def forward(self, x):
            return torch.erf(x)

    Erf2.__name__ = "Erf"
    assert BatchedForward(nn.Sequential(nn.Linear(3, 3), Erf2(), nn.Linear(3, 1))).chain is None


@pytest.mark.parametrize("make, shape", [(chain_mlp, (9, 2, 3)), (conv_net, (9, 1, 6, 6))])
def test_outputs_match_a_loop_of_functional_call(make, shape):
    fwd = BatchedForward(make())
    x = torch.randn(*shape, dtype=torch.float64)
    T = thetas_for(fwd)
    out = fwd(T, x)
    assert out.shape == (4, 9, 3)
    assert torch.allclose(out, loop(fwd, T, x), rtol=1e-12, atol=1e-12)
    xs = torch.randn(4, *shape, dtype=torch.float64)  # every copy on its own inputs
    assert torch.allclose(fwd(T, xs, per_copy=True), loop(fwd, T, xs, per_copy=True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("frozen", ["1.weight", "1.bias", "3.0.bias"])
def test_frozen_parameters_are_constants_shared_by_the_copies(frozen):
    model = chain_mlp()
    model.get_parameter(frozen).requires_grad_(False)
    fwd = BatchedForward(model)
    assert frozen not in fwd.names and fwd.n_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    x = torch.randn(5, 6, dtype=torch.float64)
    T = thetas_for(fwd, K=3)
    assert torch.allclose(fwd(T, x), loop(fwd, T, x), rtol=1e-12, atol=1e-12)
    assert torch.equal(fwd.param(T, frozen), model.get_parameter(frozen).detach())
    assert fwd.param(T, "1.weight" if frozen != "1.weight" else "3.0.weight").shape[0] == 3


def test_both_paths_are_differentiable_and_agree():
    model = chain_mlp()
    x = torch.randn(8, 6, dtype=torch.float64)
    fwd = BatchedForward(model)
    T = thetas_for(fwd, K=3).requires_grad_()
    g_chain = torch.autograd.grad(fwd(T, x).square().sum(), T)[0]
    model.register_forward_hook(lambda m, i, o: o)  # a hook: the vmap path
    vm = BatchedForward(model)
    assert vm.chain is None
    g_vmap = torch.autograd.grad(vm(T, x).square().sum(), T)[0]
    assert torch.allclose(g_chain, g_vmap, rtol=1e-12, atol=1e-12)


def test_stacked_parameters_by_name_and_the_rest_from_the_model():
    model = chain_mlp()
    fwd = BatchedForward(model)
    x = torch.randn(5, 6, dtype=torch.float64)
    W = torch.randn(3, 5, 7, dtype=torch.float64)  # only one layer stacked
    out = fwd.stacked({"3.0.weight": W}, x)
    for k in range(3):
        ref = functional_call(model, {"3.0.weight": W[k]}, (x,))
        assert torch.allclose(out[k], ref, rtol=1e-12, atol=1e-12)


def test_chain_input_and_bad_inputs():
    fwd = BatchedForward(chain_mlp())
    assert fwd.chain_input(torch.zeros(4, 2, 3)).shape == (4, 6)
    assert fwd.chain_input(torch.zeros(2, 4, 2, 3), per_copy=True).shape == (2, 4, 6)
    seq = BatchedForward(nn.Sequential(nn.Linear(3, 2)).double())  # sequences (B, T, d): the vmap path
    assert seq.chain_input(torch.zeros(4, 5, 3)) is None
    T, xs = thetas_for(seq, K=2), torch.randn(4, 5, 3, dtype=torch.float64)
    assert torch.allclose(seq(T, xs), loop(seq, T, xs), rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError):
        fwd(torch.zeros(fwd.n_params, dtype=torch.float64), torch.zeros(2, 6))
    with pytest.raises(ConfigError):
        fwd(thetas_for(fwd, K=3), torch.zeros(2, 6, dtype=torch.float64), per_copy=True)
    with pytest.raises(ConfigError):
        BatchedForward(chain_mlp(), names=["nope"])
