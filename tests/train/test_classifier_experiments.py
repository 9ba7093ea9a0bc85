"""scripts/classifier_experiments.py: each model is scored at its own manifest's input size (224 px or 320 px alike)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from factories import make_tiny_classifier

from cxrtriage.io.raster import read_raster
from cxrtriage.model import load_classifier
from cxrtriage.preprocess import PreprocessRecipe, to_model_input
from cxrtriage.train.data import classifier_records

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "classifier_experiments.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("classifier_experiments", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("classifier_experiments", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("size", "shift"), [(224, 8), (320, 11)])
def test_tta_shifts_are_the_same_share_of_the_field_at_every_input_size(size: int, shift: int) -> None:
    ce = _script()
    x = np.zeros((1, 1, size, size), np.float32)
    c = size // 2
    x[0, 0, c, c] = 1.0
    views = ce.tta_views(x, "default", pad=0.0)
    assert len(views) == 7 and all(v.shape == x.shape for v in views)
    assert views[0] is x
    # views 1-4: +x, -x, +y, -y; the single bright pixel lands exactly `shift` pixels away
    want = [(c, c + shift), (c, c - shift), (c + shift, c), (c - shift, c)]
    got = [tuple(int(i) for i in np.unravel_index(np.argmax(v[0, 0]), v.shape[2:])) for v in views[1:5]]
    assert got == want


@pytest.mark.data
def test_model_inputs_follow_the_manifest_size_and_refuse_a_disagreeing_train_config(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_TRAIN_CACHE", str(tmp_path / "cache"))
    ce = _script()
    _, records = classifier_records(shared_data, seed=0)
    picked = [next(r for r in records if r.source == s and r.split == "val") for s in ("nih14", "kermany224")]
    folder = tmp_path / "cls40"
    make_tiny_classifier(folder, size=40)
    model = load_classifier(folder, intra_op_threads=1)
    cfg = {"config": {"seed": 0}, "preprocessing": PreprocessRecipe(size=40).to_dict()}
    (folder / "train_config.json").write_text(json.dumps(cfg))

    x = ce.model_inputs(shared_data, model, folder, picked)
    assert x.shape == (2, 40, 40)
    want = to_model_input(read_raster(shared_data / picked[0].path), model.manifest.preprocessing).array[0]
    np.testing.assert_allclose(x[0].astype(np.float32), want, atol=1e-3)  # the cache stores float16
    logits, sec = ce.model_logits(model, x, "none")
    assert logits.shape == (2, 3) and sec > 0
    np.testing.assert_allclose(logits, model.run(x.astype(np.float32)[:, None]).logits, atol=1e-6)

    # a training config that preprocessed at another size than the manifest declares is refused, not scored
    (folder / "train_config.json").write_text(json.dumps({**cfg, "preprocessing": PreprocessRecipe(size=224).to_dict()}))
    with pytest.raises(SystemExit, match="differs from manifest.json"):
        ce.model_inputs(shared_data, model, folder, picked)
