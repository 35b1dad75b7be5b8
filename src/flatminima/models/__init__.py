"""The networks the studies use, and a one-string model spec for the CLI (:func:`build`).

Specs: ``mlp:256,256`` (hidden widths; optional ``:tanh`` / ``:softplus`` / ``:erf`` activation),
``lenet`` (``lenet:bn`` with BatchNorm), ``allcnn`` (``allcnn:0.5`` width multiplier), ``resnet:20``
(``resnet:8x2``: depth 8, width multiplier 2), ``committee:3`` (K hidden units, tree), ``lstm:128:2``
(character LSTM with hidden size 128 and 2 layers, over a vocabulary of ``n_classes`` characters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError
from .conv import AllCNN, LeNet, ResNet, allcnn, lenet, resnet
from .mlp import MLP, count_params, fractional_widths, mlp, mlp_for_params, widths_for_params
from .other import CharLSTM, Committee, char_lstm, committee

__all__ = [
    "MLP", "LeNet", "AllCNN", "ResNet", "CharLSTM", "Committee",
    "mlp", "mlp_for_params", "lenet", "allcnn", "resnet", "char_lstm", "committee",
    "count_params", "fractional_widths", "widths_for_params", "build", "n_params",
]


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build(spec: str, input_shape: Sequence[int], n_classes: int) -> nn.Module:
    """Build a model from a spec string (see the module docstring) for inputs of ``input_shape``.

    ``n_classes == 2`` with +-1 labels is served by a single output unit (logistic loss).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("model spec must be a non-empty string such as 'mlp:256,256' or 'lenet'")
    kind, _, rest = spec.strip().partition(":")
    args = [a for a in rest.split(":") if a] if rest else []
    d_in = int(math.prod(input_shape))
    d_out = 1 if n_classes == 2 else n_classes
    shape = tuple(input_shape) if len(input_shape) == 3 else None
    try:
        if kind == "mlp":
            if not args:
                raise ConfigError("mlp spec needs hidden widths, e.g. 'mlp:256,256'")
            widths = [int(w) for w in args[0].split(",") if w]
            act = args[1] if len(args) > 1 else "relu"
            return mlp(d_in, widths, d_out, activation=act)
        if shape is None and kind in ("lenet", "allcnn", "resnet"):
            raise ConfigError(f"model {kind!r} needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
        if kind == "lenet":
            return lenet(shape, d_out, batchnorm="bn" in args)
        if kind == "allcnn":
            return allcnn(shape, d_out, width=float(args[0]) if args else 0.25)
        if kind == "resnet":
            depth, _, width = (args[0] if args else "20").partition("x")
            return resnet(int(depth), shape, d_out, width=int(width or 1))
        if kind == "lstm":
            hidden = int(args[0]) if args else 128
            layers = int(args[1]) if len(args) > 1 else 1
            return char_lstm(vocab=n_classes, hidden=hidden, layers=layers)
        if kind == "committee":
            return committee(d_in, K=int(args[0]) if args else 3, tree=not (len(args) > 1 and args[1] == "fc"))
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad model spec {spec!r}: {exc}") from None
    raise ConfigError(f"unknown model {kind!r} in spec {spec!r}; choose mlp, lenet, allcnn, resnet, lstm or committee")
