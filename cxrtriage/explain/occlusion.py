"""Occlusion (Zeiler & Fergus 2014): how much the logit drops when a patch of the input is hidden.

Model-agnostic: it needs only ``Classifier.run`` (any ONNX classifier, no features, no head).
Each patch is replaced by the model's "no image" value (the letterbox pad value, see
``base.baseline_value``); patched inputs are scored in batches. The map at each input pixel is the
mean logit drop over all patches covering it. Cost: ((S - patch) / stride + 1)^2 forward passes.
"""

from __future__ import annotations

import numpy as np

from cxrtriage.errors import ConfigError
from cxrtriage.explain.base import CamContext, CamMethod, Family
from cxrtriage.types import FloatArray


def _starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:  # always cover the last rows / columns
        starts.append(size - patch)
    return starts


def occlusion(ctx: CamContext) -> FloatArray:
    """Mean logit drop per input pixel, at model-input resolution [S, S]."""
    assert ctx.model is not None and ctx.model_input is not None and ctx.baseline is not None
    s = ctx.size
    patch = int(ctx.options["patch"] or max(1, s // 8))
    stride = int(ctx.options["stride"] or max(1, patch // 2))
    batch_size = int(ctx.options["batch_size"])
    if not 1 <= patch <= s or stride < 1 or batch_size < 1:
        raise ConfigError(f"occlusion needs 1 <= patch <= {s}, stride >= 1 and batch_size >= 1 "
                          f"(got patch={patch}, stride={stride}, batch_size={batch_size})")
    x = ctx.model_input.reshape(1, s, s).astype(np.float32)
    base_logit = float(ctx.model.run(x[None]).logits[0, ctx.label_index])
    boxes = [(y, xx) for y in _starts(s, patch, stride) for xx in _starts(s, patch, stride)]
    total = np.zeros((s, s), np.float64)
    count = np.zeros((s, s), np.float64)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        batch = np.repeat(x[None], len(chunk), axis=0)
        for j, (y, xx) in enumerate(chunk):
            batch[j, 0, y : y + patch, xx : xx + patch] = ctx.baseline
        logits = ctx.model.run(batch).logits[:, ctx.label_index]
        for (y, xx), lg in zip(chunk, logits, strict=True):
            total[y : y + patch, xx : xx + patch] += base_logit - float(lg)
            count[y : y + patch, xx : xx + patch] += 1.0
    return (total / np.maximum(count, 1.0)).astype(np.float32)


METHOD = CamMethod(
    name="occlusion",
    title="Occlusion",
    family=Family.PERTURBATION,
    needs_head=False,
    needs_features=False,
    needs_forward=True,
    class_specific=True,
    summary="logit drop when sliding a blank patch over the input (model-agnostic, many forward passes)",
    compute=occlusion,
    options={"patch": None, "stride": None, "batch_size": 32},
)
