"""scripts/classifier_probe.py: the penalty is chosen on validation only, and a real signal is found."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def probe_script() -> ModuleType:
    pytest.importorskip("torch")  # classifier_experiments imports the training package
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("classifier_probe", REPO / "scripts" / "classifier_probe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_probe_finds_the_feature_that_separates_the_classes(probe_script: ModuleType) -> None:
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random(n) < 0.8).astype(float)  # mostly abnormal, as in NIH
    f = rng.normal(size=(n, 20))
    f[:, 3] += 1.5 * y  # one informative feature among noise
    split = np.array(["train"] * 200 + ["val"] * 50 + ["test"] * 50)
    reference = rng.normal(size=n)  # a useless "first model logit"
    out = probe_script.probe(f, y, split == "train", split == "val", split == "test", [1.0, 1e6], reference, 200)
    assert out["test"]["auroc"] > 0.8 and out["test"]["minus_first_model_logit"] > 0.2
    assert out["test"]["ci95"][0] <= out["test"]["auroc"] <= out["test"]["ci95"][1]


def test_the_penalty_is_chosen_on_validation_not_on_test(probe_script: ModuleType) -> None:
    rng = np.random.default_rng(1)
    n = 300
    y = (rng.random(n) < 0.5).astype(float)
    f = rng.normal(size=(n, 5))
    split = np.array(["train"] * 200 + ["val"] * 50 + ["test"] * 50)
    f[split == "test", 0] += 3 * y[split == "test"]  # a signal only test holds: must not steer the choice
    out = probe_script.probe(f, y, split == "train", split == "val", split == "test", [1.0, 10.0, 1e5], rng.normal(size=n), 100)
    best_val = max(out["val_auroc_by_l2"], key=lambda k: out["val_auroc_by_l2"][k])
    assert str(out["chosen_l2"]) == best_val
