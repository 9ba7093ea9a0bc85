"""Shared training utilities: seeding, logging to a file, tensor augmentation."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

log = logging.getLogger("cxrtriage.train")


def seed_everything(seed: int, threads: int = 2) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def file_logger(path: Path) -> logging.Handler:
    """Attach a file handler to the training logger (progress goes to ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(path, mode="w", encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    return h


def random_affine(x: torch.Tensor, g: torch.Generator, *, rot_deg: float = 8.0, scale: float = 0.1, shift: float = 0.06,
                  extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random rotation/scale/translation of a batch [B,C,S,S] whose values lie in (-1, 1); padding stays at -1.

    ``extra`` (a label map [B,S,S], long) is warped with the same transform using nearest sampling.
    """
    b = x.shape[0]
    ang = (torch.rand(b, generator=g) * 2 - 1) * math.radians(rot_deg)
    sc = 1 + (torch.rand(b, generator=g) * 2 - 1) * scale
    tx = (torch.rand(b, generator=g) * 2 - 1) * shift * 2
    ty = (torch.rand(b, generator=g) * 2 - 1) * shift * 2
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    warped = None
    if extra is not None:
        warped = F.grid_sample(extra[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)[:, 0].long()
    return out, warped


def random_intensity(x: torch.Tensor, g: torch.Generator, *, gamma: float = 0.3, contrast: float = 0.15,
                     brightness: float = 0.08) -> torch.Tensor:
    """Random gamma, contrast and brightness in display units ([0,1]), returned in (-1, 1)."""
    b = x.shape[0]
    u = ((x + 1) / 2).clamp(0, 1)
    gm = torch.exp((torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * gamma)
    c = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * contrast
    br = (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * brightness
    u = ((u.clamp_min(1e-6) ** gm) - 0.5) * c + 0.5 + br
    return u.clamp(0, 1) * 2 - 1


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
