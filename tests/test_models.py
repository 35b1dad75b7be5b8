import pytest
import torch

from flatminima import models
from flatminima.errors import ConfigError


@pytest.mark.parametrize(
    "spec,shape,n_out",
    [
        ("mlp:256,256", (1, 28, 28), 10),
        ("mlp:16:tanh", (10,), 2),
        ("mlp:8,8,8:erf", (5,), 3),
        ("mlp:8:softplus", (5,), 3),
        ("lenet", (1, 28, 28), 10),
        ("lenet:bn", (1, 8, 8), 10),
        ("allcnn", (1, 28, 28), 10),
        ("resnet:8", (1, 28, 28), 10),
        ("resnet:14x2", (3, 32, 32), 10),
        ("committee:3", (9,), 2),
    ],
)
def test_build_specs_forward_shapes(spec, shape, n_out):
    m = models.build(spec, shape, n_out)
    m.eval()
    out = m(torch.randn(3, *shape))
    expect = (3,) if spec.startswith("committee") else (3, 1 if n_out == 2 else n_out)
    assert tuple(out.shape) == expect


def test_mlp_parameter_count_matches_formula():
    m = models.mlp(784, [256, 256], 10)
    assert models.n_params(m) == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert m.n_weights == 784 * 256 + 256 * 256 + 256 * 10


@pytest.mark.parametrize("count", ["weights", "all", "relu"])
@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_mlp_for_params_hits_the_target_from_below(depth, count):
    for N in (500, 2000, 7854):
        h, widths = models.widths_for_params(N, 10, depth, 1, count)
        n = models.count_params(10, widths, 1, count)
        n_next = models.count_params(10, models.fractional_widths(h + 1 / depth, depth), 1, count)
        assert n <= N < n_next  # the largest network of this family with at most N parameters
        m = models.mlp_for_params(N, 10, depth, count=count)
        assert m.widths == widths
        if count == "weights":
            assert m.n_weights == n


def test_fractional_widths_spread_extra_neurons():
    assert models.fractional_widths(51.0, 3) == [51, 51, 51]
    assert models.fractional_widths(51.34, 3) == [52, 51, 51]
    assert models.fractional_widths(51.67, 3) == [52, 52, 51]


def test_char_lstm_and_committee():
    m = models.char_lstm(vocab=30, hidden=16, layers=2)
    assert m(torch.randint(0, 30, (4, 11))).shape == (4, 11, 30)
    c = models.committee(12, K=3, tree=True, activation="sign")
    x = torch.randn(5, 12)
    fields = torch.einsum("pkj,kj->pk", x.view(5, 3, 4), c.weight) / 2.0
    assert torch.equal(c(x), torch.sign(fields).sum(-1))


@pytest.mark.parametrize("spec", ["", "mlp", "mlp:a,b", "resnet:9", "lenet:bn", "transformer", "mlp:8:gelu"])
def test_bad_specs_raise_config_error(spec):
    shape = (10,) if spec == "lenet:bn" else (1, 28, 28)
    with pytest.raises(ConfigError):
        models.build(spec, shape, 10)


def test_lstm_spec():
    m = models.build("lstm:16:2", (12,), 40)
    assert m(torch.randint(0, 40, (3, 12))).shape == (3, 12, 40)
