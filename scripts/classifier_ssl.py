"""Self-supervised pre-training of the classifier's backbone (issue 15, attempt 6).

Usage:
    python scripts/classifier_ssl.py --data ../shared/data --out /work/ssl [--epochs 30] [--view 112] [--batch 128]
    python -m cxrtriage train classifier --data ../shared/data --out /work/ssl_ft --seed 0 --init-from /work/ssl/model.pt

The question: the network learns what a chest looks like only through its labels, and the adult ones come from ~300
NIH images. Does contrastive pre-training (SimCLR: two random views of each image must find each other among the
batch, NT-Xent loss) on the radiographs themselves, labels unused, give the supervised recipe a better start?

Images: the TRAINING patients of the seed-0 splits of every source (Kermany, NIH, ieee), each once per epoch. The
validation and test patients are left out, so nothing about them reaches the weights before they are scored.
Inputs are the shipped recipe's 224 px model inputs (the training cache); each view is a random crop (35-100% of the
area, aspect 3:4-4:3, rotation +-10 degrees) resized to ``--view`` px, with random gamma / contrast / brightness,
Gaussian blur and noise. No flips: a mirrored chest puts the heart on the wrong side.

Writes ``OUT/model.pt`` in the classifier's checkpoint format (the pre-trained backbone and a freshly seeded head) and
``OUT/splits/splits.csv``, so that `train classifier --init-from OUT/model.pt` fine-tunes it with the shipped recipe
(its split check passes), plus ``OUT/ssl_config.json`` (settings and per-epoch loss and top-1 pair accuracy).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrtriage.train.classifier import ClassifierConfig  # noqa: E402
from cxrtriage.train.common import cosine_lr, random_intensity, seed_everything  # noqa: E402
from cxrtriage.train.data import cached_arrays, classifier_records, write_splits  # noqa: E402
from cxrtriage.train.nets import SlimResNet  # noqa: E402


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--view", type=int, default=112, help="view size in px (the fine-tune runs at 224)")
    ap.add_argument("--batch", type=int, default=128, help="pairs per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    t0 = time.time()
    g = seed_everything(args.seed, threads=args.threads)
    cfg = ClassifierConfig(seed=args.seed)
    labels, records = classifier_records(args.data, seed=args.seed)
    x_all, _ = cached_arrays(args.data, records, cfg.recipe())  # the whole list: the classifier's own cache entry
    tr = np.array([i for i, r in enumerate(records) if r.split == "train"])
    by_source = {s: int(sum(records[i].source == s for i in tr)) for s in sorted({r.source for r in records})}
    print(f"{len(tr)} training images {by_source}; {len(records) - len(tr)} val/test images left out", flush=True)

    model = SlimResNet(len(labels), cfg.widths, cfg.depths, cfg.stem, cfg.dropout)
    head_init = {k: v.clone() for k, v in model.head.state_dict().items()}  # the fine-tune starts from a seeded head
    width = cfg.widths[-1]
    proj = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Linear(width, 128))
    params = list(model.stem.parameters()) + list(model.blocks.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps = len(tr) // args.batch
    total, warm = steps * args.epochs, steps
    rng = np.random.default_rng(args.seed)
    history: list[dict[str, float]] = []
    step = 0
    for ep in range(args.epochs):
        te = time.time()
        model.train()
        proj.train()
        order = rng.permutation(tr)
        losses, accs = [], []
        for b in range(steps):
            xb = torch.from_numpy(x_all[order[b * args.batch : (b + 1) * args.batch]].astype(np.float32))[:, None]
            v1, v2 = random_views(xb, g, args.view), random_views(xb, g, args.view)
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, args.lr, warm)
            feats = model.blocks(model.stem(torch.cat([v1, v2])))
            z = proj(feats.mean(dim=(2, 3)))
            loss, acc = nt_xent(z[: len(xb)], z[len(xb) :], args.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            accs.append(acc)
            step += 1
        history.append({"epoch": ep + 1, "loss": float(np.mean(losses)), "pair_top1": float(np.mean(accs)),
                        "seconds": round(time.time() - te, 1)})
        print(f"epoch {ep + 1}/{args.epochs} loss {np.mean(losses):.4f} pair top-1 {np.mean(accs):.3f} "
              f"({time.time() - te:.0f}s, total {time.time() - t0:.0f}s)", flush=True)

    model.head.load_state_dict(head_init)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state_dict": model.state_dict()}, args.out / "model.pt")
    write_splits(records, args.out / "splits" / "splits.csv")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "ssl_config.json").write_text(json.dumps({
        "settings": settings, "train_images": len(tr), "by_source": by_source, "history": history,
        "seconds": round(time.time() - t0, 1), "torch": torch.__version__}, indent=2))
    print(f"wrote {args.out / 'model.pt'} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
