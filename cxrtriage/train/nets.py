"""Network definitions: a slim ResNet-style classifier (GAP + one linear head) and a small U-Net.

Also rebuilding the classifier from its stored config and batch inference with it: training (classifier.py) and
export/evaluation (finalize.py) both need them, so they live here rather than in either of those two modules.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection; ends with ReLU (post-activation output)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # nn.Module calls are typed as returning Any: the annotated locals keep these functions' return types checked
        y: torch.Tensor = self.relu(out + self.short(x))
        return y


class SlimResNet(nn.Module):
    """Single-channel ResNet-style CNN: stem /4, four stages (/32 overall), GAP, one linear layer.

    ``forward`` returns ``(logits, features)`` where ``features`` is the post-ReLU output of the
    last residual block, so Grad-CAM computed from the linear head weights is exact.
    """

    def __init__(self, n_labels: int, widths: tuple[int, ...] = (32, 64, 128, 256), depths: tuple[int, ...] = (1, 1, 2, 1),
                 stem: int = 24, dropout: float = 0.2) -> None:
        super().__init__()
        self.config = {"n_labels": n_labels, "widths": list(widths), "depths": list(depths), "stem": stem, "dropout": dropout}
        self.stem = nn.Sequential(_conv_bn(1, stem, 2, 5), _conv_bn(stem, widths[0], 2, 3))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            for j in range(d):
                blocks.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, n_labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.blocks(self.stem(x))
        pooled = feats.mean(dim=(2, 3))
        return self.head(self.dropout(pooled)), feats


def build_model(cfg: dict[str, Any]) -> SlimResNet:
    """Rebuild a SlimResNet from the ``config`` it stored in model.pt (``SlimResNet.config``)."""
    return SlimResNet(int(cfg["n_labels"]), tuple(cfg["widths"]), tuple(cfg["depths"]), int(cfg["stem"]), float(cfg["dropout"]))


@torch.no_grad()
def predict_logits(model: SlimResNet, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits [N, L] of ``model`` in eval mode for preprocessed images ``x`` [N, S, S], in batches."""
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i : i + batch].astype(np.float32))[:, None]
        out.append(model(xb)[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features), np.float32)


class _Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, 2)
        self.conv = nn.Sequential(_conv_bn(cin // 2 + cskip, cout), _conv_bn(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv(torch.cat([self.up(x), skip], dim=1))
        return y


class UNet(nn.Module):
    """A compact U-Net (4 down-samplings) returning per-class logits [N, K, S, S].

    With ``stem_stride=2`` the encoder starts at half resolution (4x cheaper on CPU) and a learned
    2x up-sampling restores full resolution before the 1x1 classifier.
    """

    def __init__(self, n_classes: int, base: int = 16, stem_stride: int = 2) -> None:
        super().__init__()
        self.config = {"n_classes": n_classes, "base": base, "stem_stride": stem_stride}
        c = [base, base * 2, base * 4, base * 8, base * 16]
        self.enc0 = nn.Sequential(_conv_bn(1, c[0], stem_stride), _conv_bn(c[0], c[0]))
        self.full: nn.Module = nn.Identity()
        if stem_stride == 2:
            self.full = nn.Sequential(nn.ConvTranspose2d(c[0], c[0], 2, 2), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True),
                                      _conv_bn(c[0], c[0]))
        self.enc = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), _conv_bn(c[i], c[i + 1]), _conv_bn(c[i + 1], c[i + 1]))
                                 for i in range(4))
        self.dec = nn.ModuleList(_Up(c[i + 1], c[i], c[i]) for i in reversed(range(4)))
        self.out = nn.Conv2d(c[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.enc0(x)]
        for e in self.enc:
            skips.append(e(skips[-1]))
        y = skips.pop()
        for d in self.dec:
            y = d(y, skips.pop())
        logits: torch.Tensor = self.out(self.full(y))
        return logits
