"""Self-supervised pre-training of the classifier's backbone (issue 15, attempt 6).

Usage:
    python scripts/classifier_ssl.py --data ../shared/data --out /work/ssl [--epochs 30] [--view 112] [--batch 128]
    python -m cxrtriage train classifier --data ../shared/data --out /work/ssl_ft --seed 0 --init-from /work/ssl/model.pt

The question: the network learns what a chest looks like only through its labels, and the adult ones come from ~300
NIH images. Does contrastive pre-training (SimCLR: two random views of each image must find each other among the
batch, NT-Xent loss; `cxrtriage.train.ssl`) on the radiographs themselves, labels unused, give the supervised recipe a
better start?

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
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrtriage.train.classifier import ClassifierConfig, save_checkpoint  # noqa: E402
from cxrtriage.train.common import seed_everything  # noqa: E402
from cxrtriage.train.data import cached_arrays, classifier_records, write_splits  # noqa: E402
from cxrtriage.train.nets import SlimResNet  # noqa: E402
from cxrtriage.train.ssl import SslSettings, pretrain  # noqa: E402


def main() -> int:
    d = SslSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--view", type=int, default=d.view, help="view size in px (the fine-tune runs at 224)")
    ap.add_argument("--batch", type=int, default=d.batch, help="pairs per step")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--temperature", type=float, default=d.temperature)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    settings = SslSettings(args.epochs, args.view, args.batch, args.lr, args.temperature)

    t0 = time.time()
    g = seed_everything(args.seed, threads=args.threads)
    cfg = ClassifierConfig(seed=args.seed)
    labels, records = classifier_records(args.data, seed=args.seed)
    x_all, _ = cached_arrays(args.data, records, cfg.recipe())  # the whole list: the classifier's own cache entry
    tr = np.array([i for i, r in enumerate(records) if r.split == "train"])
    by_source = {s: int(sum(records[i].source == s for i in tr)) for s in sorted({r.source for r in records})}
    print(f"{len(tr)} training images {by_source}; {len(records) - len(tr)} val/test images left out", flush=True)

    model = SlimResNet(len(labels), cfg.widths, cfg.depths, cfg.stem, cfg.dropout)

    def progress(h: dict[str, float]) -> None:
        print(f"epoch {h['epoch']:.0f}/{settings.epochs} loss {h['loss']:.4f} pair top-1 {h['pair_top1']:.3f} "
              f"({h['seconds']:.0f}s, total {time.time() - t0:.0f}s)", flush=True)

    history = pretrain(model, x_all, tr, settings, g, np.random.default_rng(args.seed), progress)
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.config, model.state_dict(), args.out / "model.pt")
    write_splits(records, args.out / "splits" / "splits.csv")
    (args.out / "ssl_config.json").write_text(json.dumps({
        "settings": asdict(settings), "seed": args.seed, "threads": args.threads, "train_images": len(tr),
        "by_source": by_source, "history": history, "seconds": round(time.time() - t0, 1)}, indent=2))
    print(f"wrote {args.out / 'model.pt'} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
