"""A character-level LSTM and committee machines."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError


class CharLSTM(nn.Module):
    """Character-level language model: embedding -> LSTM(layers) -> linear over the vocabulary.

    Input (B, T) int64 character codes; output (B, T, vocab) logits (the per-example losses of
    flatminima average over the T positions).
    """

    def __init__(self, vocab: int, embed: int = 32, hidden: int = 128, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if vocab < 2 or embed < 1 or hidden < 1 or layers < 1:
            raise ConfigError(f"invalid CharLSTM sizes vocab={vocab}, embed={embed}, hidden={hidden}, layers={layers}")
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))
        return self.out(h)


def char_lstm(vocab: int, embed: int = 32, hidden: int = 128, layers: int = 2, dropout: float = 0.0) -> CharLSTM:
    """A character-level LSTM (see :class:`CharLSTM`)."""
    return CharLSTM(vocab, embed, hidden, layers, dropout)


class Committee(nn.Module):
    """Committee machine with K hidden units and a fixed +1 output layer.

    ``tree=True``: hidden unit k sees only the k-th block of d/K inputs (non-overlapping receptive
    fields); otherwise every unit sees all d inputs (fully connected). The output is
    ``sum_k act(w_k . x_k / sqrt(n_k))`` with ``act`` = ``"sign"`` (the discrete committee; not
    differentiable), ``"tanh"`` or ``"erf"`` (smooth surrogates), so ``sign(output)`` is the committee vote.
    Input (P, d), output (P,).
    """

    def __init__(self, d: int, K: int = 3, tree: bool = True, activation: str = "tanh", binary: bool = False) -> None:
        super().__init__()
        if K < 1 or d < 1:
            raise ConfigError(f"K and d must be positive, got K={K}, d={d}")
        if tree and d % K:
            raise ConfigError(f"a tree committee needs d divisible by K, got d={d}, K={K}")
        if activation not in ("sign", "tanh", "erf", "relu"):
            raise ConfigError(f"activation must be sign, tanh, erf or relu, got {activation!r}")
        self.d, self.K, self.tree, self.activation = d, K, tree, activation
        self.fan_in = d // K if tree else d
        w = torch.randn(K, self.fan_in)
        self.weight = nn.Parameter(torch.sign(w) if binary else w)

    def fields(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden pre-activations (P, K)."""
        x = x.reshape(x.shape[0], -1)
        if self.tree:
            h = torch.einsum("pkj,kj->pk", x.reshape(x.shape[0], self.K, self.fan_in), self.weight)
        else:
            h = x @ self.weight.T
        return h / math.sqrt(self.fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fields(x)
        act = {"sign": torch.sign, "tanh": torch.tanh, "erf": torch.erf, "relu": torch.relu}[self.activation]
        return act(h).sum(-1)


def committee(d: int, K: int = 3, tree: bool = True, activation: str = "tanh", binary: bool = False) -> Committee:
    """A committee machine (see :class:`Committee`)."""
    return Committee(d, K, tree, activation, binary)
