"""SimCLR pre-training (issue 15, attempt 6): views, the NT-Xent loss, and a checkpoint that --init-from accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cxrtriage.train.classifier import load_init, save_checkpoint  # noqa: E402
from cxrtriage.train.nets import SlimResNet  # noqa: E402
from cxrtriage.train.ssl import SslSettings, nt_xent, pretrain, random_views  # noqa: E402


def _tiny() -> SlimResNet:
    return SlimResNet(3, (8, 16, 32, 64), (1, 1, 1, 1), stem=8)


def test_views_are_random_crops_of_the_input_in_range() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-0.9, 0.9, 64)[None, None, :, None].expand(4, 1, 64, 64).contiguous()  # rows get brighter
    v1, v2 = random_views(x, g, 32), random_views(x, g, 32)
    assert v1.shape == (4, 1, 32, 32) and float(v1.min()) >= -1 and float(v1.max()) <= 1
    assert not torch.allclose(v1, v2)  # two views of one image differ
    # no flips: the vertical gradient keeps its direction in every view (the rotation is at most 10 degrees)
    assert bool((v1[:, 0, -4:].mean((1, 2)) > v1[:, 0, :4].mean((1, 2))).all())


def test_nt_xent_finds_pairs_and_rewards_agreement() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    loss_same, acc_same = nt_xent(z, z + 0.01 * torch.randn(16, 8), 0.2)
    loss_rand, acc_rand = nt_xent(z, torch.randn(16, 8), 0.2)
    assert acc_same == 1.0 and acc_rand < 0.5
    assert float(loss_same) < float(loss_rand)


def test_pretrain_changes_the_backbone_only_and_init_from_loads_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).uniform(-1, 1, (12, 48, 48)).astype(np.float16)
    hist = pretrain(model, x, np.arange(12), SslSettings(epochs=2, view=32, batch=6), torch.Generator().manual_seed(0),
                    np.random.default_rng(0))
    assert [h["epoch"] for h in hist] == [1, 2] and all(np.isfinite(h["loss"]) for h in hist)
    after = model.state_dict()
    assert torch.equal(after["head.weight"], before["head.weight"]) and torch.equal(after["head.bias"], before["head.bias"])
    assert not torch.equal(after["stem.0.0.weight"], before["stem.0.0.weight"])
    save_checkpoint(model.config, model.state_dict(), tmp_path / "model.pt")
    fresh = _tiny()
    load_init(fresh, tmp_path / "model.pt")
    assert torch.equal(fresh.state_dict()["stem.0.0.weight"], after["stem.0.0.weight"])
