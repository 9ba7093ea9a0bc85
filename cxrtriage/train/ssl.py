"""Self-supervised (SimCLR) pre-training of the classifier backbone (issue 15, attempt 6).

Two random views of each radiograph must find each other among the batch (NT-Xent loss). The views are random crops
of the recipe's model input, resized, with intensity changes, blur and noise; no flips (a mirrored chest puts the
heart on the wrong side). The result is a classifier checkpoint (the pre-trained backbone and a freshly seeded head)
that `train classifier --init-from` fine-tunes. `scripts/classifier_ssl.py` is the command line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from cxrtriage.train.common import cosine_lr, random_intensity
from cxrtriage.train.nets import SlimResNet


@dataclass(frozen=True, slots=True)
class SslSettings:
    """The pre-training knobs (saved beside the checkpoint by `scripts/classifier_ssl.py`)."""

    epochs: int = 30
    view: int = 112  # view size in px (the fine-tune runs at the recipe's 224)
    batch: int = 128  # pairs per step
    lr: float = 1e-3
    temperature: float = 0.2


def random_views(x: torch.Tensor, g: torch.Generator, out: int, *, min_area: float = 0.35,
                 rot_deg: float = 10.0) -> torch.Tensor:
    """One random view [B,1,out,out] of each image of ``x`` [B,1,S,S] (values in (-1, 1), padding stays at -1)."""
    b = x.shape[0]

    def u(lo: float, hi: float, shape: tuple[int, ...] = (b,)) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    area = u(min_area, 1.0)
    aspect = torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
    half_w = torch.sqrt(area * aspect).clamp(max=1.0)  # half-extents in affine_grid's [-1, 1] coordinates
    half_h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - half_w)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - half_h)
    ang = u(-math.radians(rot_deg), math.radians(rot_deg))
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([half_w * cos, -half_h * sin, cx], 1),
                         torch.stack([half_w * sin, half_h * cos, cy], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, out, out], align_corners=False)
    v = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    v = random_intensity(v, g, gamma=0.5, contrast=0.3, brightness=0.15)
    # Gaussian blur on half the views (sigma 0.3-1.5 px), one kernel per view through a grouped convolution
    sigma = u(0.3, 1.5)
    blur = torch.rand(b, generator=g) < 0.5
    r = torch.arange(-3, 4, dtype=torch.float32)
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :])[:, None]  # [B,1,7,7]
    blurred = F.conv2d(F.pad(v.transpose(0, 1), (3, 3, 3, 3), mode="replicate"), k2, groups=b).transpose(0, 1)
    v = torch.where(blur[:, None, None, None], blurred, v)
    v = v + torch.randn(v.shape, generator=g) * u(0.0, 0.04)[:, None, None, None]
    return v.clamp(-1, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """SimCLR's loss for a batch of pairs, and the share of views whose nearest other view is their pair."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    acc = float((sim.argmax(1) == target).float().mean())
    return F.cross_entropy(sim, target), acc


def pretrain(model: SlimResNet, x: np.ndarray, idx: np.ndarray, settings: SslSettings, g: torch.Generator,
             rng: np.random.Generator, progress: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Pre-train ``model``'s stem and blocks on the images ``x[idx]`` ([N, S, S] model inputs); its head is untouched.

    Returns the per-epoch history (mean loss, mean top-1 pair accuracy, seconds); ``progress`` gets each entry.
    """
    width = model.head.in_features
    proj = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Linear(width, 128))
    params = list(model.stem.parameters()) + list(model.blocks.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    steps = len(idx) // settings.batch
    total, warm = steps * settings.epochs, steps
    history: list[dict[str, float]] = []
    step = 0
    for ep in range(settings.epochs):
        te = time.time()
        model.train()
        proj.train()
        order = rng.permutation(idx)
        losses, accs = [], []
        for b in range(steps):
            xb = torch.from_numpy(x[order[b * settings.batch : (b + 1) * settings.batch]].astype(np.float32))[:, None]
            v1, v2 = random_views(xb, g, settings.view), random_views(xb, g, settings.view)
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, settings.lr, warm)
            feats = model.blocks(model.stem(torch.cat([v1, v2])))
            z = proj(feats.mean(dim=(2, 3)))
            loss, acc = nt_xent(z[: len(xb)], z[len(xb) :], settings.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            accs.append(acc)
            step += 1
        history.append({"epoch": ep + 1, "loss": float(np.mean(losses)), "pair_top1": float(np.mean(accs)),
                        "seconds": round(time.time() - te, 1)})
        if progress is not None:
            progress(history[-1])
    return history

