"""Convolutional networks: a LeNet-style CNN, a small All-CNN-C and CIFAR-style ResNets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError


def _check_input(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
        raise ConfigError(f"input_shape must be (channels, height, width), got {tuple(input_shape)}")
    return int(input_shape[0]), int(input_shape[1]), int(input_shape[2])


def _flat_size(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


class LeNet(nn.Module):
    """LeNet-style CNN: conv(c1, 5x5)-ReLU-maxpool2, conv(c2, 5x5)-ReLU-maxpool2, FC(hidden)-ReLU, FC(classes).

    With ``batchnorm`` a BatchNorm follows each conv and the hidden FC layer (the Entropy-SGD paper's
    "mnistconv"); ``dropout`` is applied after each block. Input (P, C, H, W), output (P, n_classes).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        n_classes: int = 10,
        channels: Sequence[int] = (20, 50),
        hidden: int = 500,
        batchnorm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = _check_input(input_shape)
        if len(channels) != 2 or min(channels) < 1 or hidden < 1:
            raise ConfigError(f"LeNet needs two positive channel counts and a positive hidden size, got {channels}, {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        c1, c2 = channels
        pad = 2 if min(h, w) < 20 else 0  # small inputs (8x8 digits) keep their size through the convs

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=pad)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            return layers

        self.features = nn.Sequential(*block(c, c1), *block(c1, c2), nn.Flatten())
        flat = _flat_size(self.features, (c, h, w))
        head: list[nn.Module] = [nn.Linear(flat, hidden)]
        if batchnorm:
            head.append(nn.BatchNorm1d(hidden))
        head.append(nn.ReLU())
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, n_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def lenet(input_shape=(1, 28, 28), n_classes: int = 10, channels=(20, 50), hidden: int = 500,
          batchnorm: bool = False, dropout: float = 0.0) -> LeNet:
    """A LeNet-style CNN (see :class:`LeNet`)."""
    return LeNet(input_shape, n_classes, channels, hidden, batchnorm, dropout)


class AllCNN(nn.Module):
    """A small All-CNN-C (Springenberg et al.): only convolutions, strided convs instead of pooling,
    global average pooling. ``width`` scales the (96, 192) channel counts; BatchNorm after every conv."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), n_classes: int = 10, width: float = 0.25,
                 batchnorm: bool = True) -> None:
        super().__init__()
        c, _, _ = _check_input(input_shape)
        if width <= 0:
            raise ConfigError(f"width multiplier must be positive, got {width}")
        a, b = max(1, round(96 * width)), max(1, round(192 * width))
        spec = [(c, a, 3, 1, 1), (a, a, 3, 1, 1), (a, a, 3, 2, 1), (a, b, 3, 1, 1), (b, b, 3, 1, 1),
                (b, b, 3, 2, 1), (b, b, 3, 1, 1), (b, b, 1, 1, 0)]
        layers: list[nn.Module] = []
        for cin, cout, k, s, p in spec:
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
        layers += [nn.Conv2d(b, n_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def allcnn(input_shape=(1, 28, 28), n_classes: int = 10, width: float = 0.25, batchnorm: bool = True) -> AllCNN:
    """A small All-CNN-C (see :class:`AllCNN`)."""
    return AllCNN(input_shape, n_classes, width, batchnorm)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of depth 6n+2 (8, 14, 20, ...): three stages of n basic blocks with
    16k, 32k, 64k channels (k the width multiplier), for inputs such as 1x28x28 or 3x32x32."""

    def __init__(self, depth: int = 20, input_shape: Sequence[int] = (3, 32, 32), n_classes: int = 10,
                 width: int = 1) -> None:
        super().__init__()
        c, _, _ = _check_input(input_shape)
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"ResNet depth must be 6n+2 >= 8 (8, 14, 20, ...), got {depth}")
        if width < 1:
            raise ConfigError(f"width multiplier must be >= 1, got {width}")
        n = (depth - 2) // 6
        ch = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Sequential(nn.Conv2d(c, ch[0], 3, padding=1, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = ch[0]
        for i, cout in enumerate(ch):
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def resnet(depth: int = 20, input_shape=(3, 32, 32), n_classes: int = 10, width: int = 1) -> ResNet:
    """A CIFAR-style ResNet (see :class:`ResNet`)."""
    return ResNet(depth, input_shape, n_classes, width)
