"""Tiny models shared by the test suite (one place, so every test quantizes the same ones)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in: int = 64, hidden: int = 64, d_out: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc10 = nn.Linear(hidden, d_out)  # named so that a prefix match of fc1 would hit it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc10(torch.relu(self.fc2(self.relu(self.fc1(x)))))


class ResidualCNN(nn.Module):
    """Conv + BN + ReLU, a residual add, a functional relu, pooling and a Linear head."""

    def __init__(self, channels: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(channels)
        self.relu0 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu0(self.bn0(self.stem(x)))
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = torch.relu(x + y)
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyTransformerBlock(nn.Module):
    """Embedding, one pre-norm attention block with explicit Linear projections, MLP, head."""

    def __init__(self, vocab: int = 100, d: int = 32, heads: int = 4, n_classes: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, d)
        self.ln1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)
        self.head = nn.Linear(d, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        b, t, d = x.shape
        h = self.ln1(x)

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        att = torch.softmax(
            split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / (d // self.heads) ** 0.5, -1
        )
        x = x + self.o((att @ split(self.v(h))).transpose(1, 2).reshape(b, t, d))
        x = x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))
        return self.head(x.mean(1))


class LSTMClassifier(nn.Module):
    def __init__(self, d_in: int = 8, hidden: int = 32, n_classes: int = 3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class GRUClassifier(nn.Module):
    def __init__(self, d_in: int = 8, hidden: int = 32, n_classes: int = 3) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


class Conv1dNet(nn.Module):
    def __init__(self, c_in: int = 4, channels: int = 16, n_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, channels, 5, padding=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(-1))


def settle_bn(model: nn.Module, example: torch.Tensor, steps: int = 3) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics, then switch to eval."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(example)
    return model.eval()


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual (24 -> 144 -> 24, stride 1, residual add).

    ``act`` picks the spelling of the expand conv's ReLU6: ``module`` (nn.ReLU6),
    ``relu6`` (F.relu6), ``hardtanh`` (F.hardtanh(0, 6)) or ``clamp`` (torch.clamp(0, 6)).
    """

    def __init__(self, c: int = 24, expand: int = 6, act: str = "module") -> None:
        super().__init__()
        h = c * expand
        self.act = act
        self.expand = nn.Conv2d(c, h, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(h)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False)
        self.bn2 = nn.BatchNorm2d(h)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(h, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def expand_act(self, y: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.act == "relu6":
            return F.relu6(y)
        if self.act == "hardtanh":
            return F.hardtanh(y, 0.0, 6.0)
        if self.act == "clamp":
            return torch.clamp(y, 0.0, 6.0)
        return self.act1(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand_act(self.bn1(self.expand(x)))
        y = self.act2(self.bn2(self.dw(y)))
        return x + self.bn3(self.project(y))


class ConvReLU6Depthwise(nn.Module):
    """conv-BN-ReLU6 -> depthwise conv: the pair where issue 15's error arose."""

    def __init__(self, c: int = 24, h: int = 144) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, h, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(h)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(h, h, 3, padding=1, groups=h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.act1(self.bn1(self.expand(x))))


def mostly_negative(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics, with the first BN's bias around -3 so that the expand
    conv's pre-activation range is mostly negative (ReLU6 then drops most of it)."""
    torch.manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(0.0, 1.0)
        bns[0].bias.normal_(-3.0, 1.0)
    return model.eval()
