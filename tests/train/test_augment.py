"""The segmenter's heavy augmentation: label maps move with the image, sides never swap, padding stays black."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from cxrtriage.train.augment import affine_heavy, photometric_heavy  # noqa: E402


def _batch(b: int = 6, s: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A letterboxed 'chest': a bright body on a black pad, two dark lungs labelled 1 (image left) and 2."""
    x = torch.full((b, 1, s, s), -1.0)
    x[:, :, 8:56, 4:60] = 0.6
    y = torch.zeros((b, s, s), dtype=torch.long)
    x[:, :, 14:48, 10:28] = -0.6
    y[:, 14:48, 10:28] = 1
    x[:, :, 14:48, 36:54] = -0.6
    y[:, 14:48, 36:54] = 2
    return x, y


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_affine_moves_labels_with_the_image_and_never_swaps_sides() -> None:
    x, y = _batch()
    xo, yo = affine_heavy(x, y, _gen(3))
    assert xo.shape == x.shape and yo.shape == y.shape and yo.dtype == torch.long
    cols = torch.arange(64, dtype=torch.float32)
    for k in range(x.shape[0]):
        right = cols[(yo[k] == 1).any(0)].mean()
        left = cols[(yo[k] == 2).any(0)].mean()
        assert right < left  # the patient's right lung stays on the image left
        # the warped lungs are where the warped image is dark: labels and pixels moved together
        lung = yo[k] > 0
        assert float(xo[k, 0][lung].mean()) < -0.3
        assert float(xo[k, 0][~lung & (xo[k, 0] > -0.99)].mean()) > 0.2
    assert not torch.equal(xo, x)


def test_photometric_is_seeded_bounded_and_keeps_padding_black() -> None:
    x, _ = _batch(b=32)
    a = photometric_heavy(x, _gen(5))
    b = photometric_heavy(x, _gen(5))
    assert torch.equal(a, b)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    pad = x <= -0.999
    assert bool((a[pad] == -1.0).all())
    # the body changes from sample to sample (gamma/contrast/blur/noise), not always the same way
    body = a[:, 0, 10, 30]
    assert float(body.std()) > 0.05


def test_inversion_flips_the_grey_scale_inside_the_image_only() -> None:
    x, _ = _batch(b=4)
    a = photometric_heavy(x, _gen(0), p_invert=1.0)
    # lungs become brighter than the body when inverted (dark lungs on a bright body before)
    lungs, body = a[:, 0, 20:40, 14:24].mean(), a[:, 0, 50:54, 30:34].mean()
    assert float(lungs) > float(body)
    assert np.all(a[x <= -0.999].numpy() == -1.0)
