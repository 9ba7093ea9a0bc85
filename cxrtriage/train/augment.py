"""Heavy, label-preserving augmentation for the lung segmenter: acquisition-like photometric changes and geometry."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812


def _u(n: int, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _coin(n: int, g: torch.Generator, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def affine_heavy(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, *, rot_deg: float = 15.0, scale: float = 0.2,
                 aspect: float = 0.1, shear: float = 0.08, shift: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation, isotropic scale, aspect change, shear and shift of a batch x [B,1,S,S] in (-1, 1) and its label map.

    No flips: a flip swaps the patient's right and left lung. Padding is -1 (black), as letterbox padding is.
    """
    b = x.shape[0]
    ang = _u(b, g, -1, 1) * math.radians(rot_deg)
    sc = 1 + _u(b, g, -1, 1) * scale
    asp = torch.exp(_u(b, g, -1, 1) * aspect)
    sh = _u(b, g, -1, 1) * shear
    tx, ty = _u(b, g, -1, 1) * shift * 2, _u(b, g, -1, 1) * shift * 2
    sx, sy = 1 / (sc * asp), asp / sc  # sampling-grid scale: the content is scaled by the inverse
    cos, sin = torch.cos(ang), torch.sin(ang)
    # grid = R(ang) @ [[sx, sh], [0, sy]]
    a11, a12 = cos * sx, cos * sh - sin * sy
    a21, a22 = sin * sx, sin * sh + cos * sy
    theta = torch.stack([torch.stack([a11, a12, tx], 1), torch.stack([a21, a22, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xo = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    yo = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    return xo, yo


def _blur(u: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur (sigma in pixels, 0 = unchanged)."""
    r = 4
    t = torch.arange(-r, r + 1, dtype=u.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    k = torch.where(sigma[:, None] > 0, k, (t[None] == 0).to(u.dtype))
    b = u.shape[0]
    # grouped convolution: one kernel per sample
    v = u.reshape(1, b, *u.shape[2:])
    v = F.conv2d(F.pad(v, (r, r, 0, 0), mode="replicate"), k[:, None, None, :], groups=b)
    v = F.conv2d(F.pad(v, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=b)
    return v.reshape(u.shape)


def photometric_heavy(x: torch.Tensor, g: torch.Generator, *, p_invert: float = 0.05) -> torch.Tensor:
    """Gamma, contrast, brightness, blur, low-resolution, block (JPEG-like) and noise artefacts, rare inversion.

    Works in display units [0, 1]; returns (-1, 1). Inversion mimics a MONOCHROME1 image shown without its
    photometric interpretation; the letterbox/affine padding stays black as in a real inverted input.
    """
    b, _, s, _ = x.shape
    pad = x <= -0.999
    u = ((x + 1) / 2).clamp(0, 1)
    inv = _coin(b, g, p_invert)[:, None, None, None]
    u = torch.where(inv, 1 - u, u)
    gm = torch.exp(_u(b, g, -1, 1) * 0.5)[:, None, None, None]
    c = (1 + _u(b, g, -1, 1) * 0.35)[:, None, None, None]
    br = (_u(b, g, -1, 1) * 0.15)[:, None, None, None]
    u = ((u.clamp_min(1e-6) ** gm) - 0.5) * c + 0.5 + br
    sigma = torch.where(_coin(b, g, 0.3), _u(b, g, 0.5, 2.0), torch.zeros(b))
    u = _blur(u, sigma)
    lowres = _coin(b, g, 0.2)
    if bool(lowres.any()):
        f = float(_u(1, g, 1.5, 3.0))
        small = F.interpolate(u, scale_factor=1 / f, mode="area")
        u = torch.where(lowres[:, None, None, None], F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False), u)
    block = _coin(b, g, 0.1)
    if bool(block.any()):  # 8x8 block means blended in: the blockiness of a strongly compressed JPEG
        blocks = F.interpolate(F.avg_pool2d(u, 8, ceil_mode=True), scale_factor=8, mode="nearest")[..., :s, :s]
        u = torch.where(block[:, None, None, None], 0.5 * u + 0.5 * blocks, u)
    noise_sd = torch.where(_coin(b, g, 0.3), _u(b, g, 0.01, 0.06), torch.zeros(b))[:, None, None, None]
    u = u + noise_sd * torch.randn(u.shape, generator=g)
    u = u.clamp(0, 1) * 2 - 1
    return torch.where(pad, torch.full_like(u, -1.0), u)
