"""An edited manifest is never used silently (issue 11, row 8): the seal, the field validation, the graph check.

Each recipe of the issue is tried twice: as a tampering (the manifest is edited, its old seal stays) and as an
owner's edit that is re-sealed. The first is always refused by the integrity check; the second is refused by
the field validation when the value is invalid, and otherwise loads with a new integrity value that the
results record.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from factories import edit_manifest, make_tiny_classifier, make_tiny_segmenter

from cxrtriage.errors import ModelError
from cxrtriage.model import Classifier, load_model
from cxrtriage.model.integrity import changed_fields, field_digests, manifest_digest
from cxrtriage.model.manifest import load_manifest, read_manifest_data, sha256_file
from cxrtriage.model.verify import seal_manifest, verify_model

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture()
def man(tmp_path: Path) -> Path:
    """The manifest of a tiny classifier (labels abnormal, pneumonia, effusion), sealed by the factory."""
    return make_tiny_classifier(tmp_path / "m")


def _data(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _edit(path: Path, change: Edit, *, seal: bool) -> dict[str, Any]:
    data = _data(path)
    change(data)
    edit_manifest(path, data, seal=seal)
    return data


def _set(*keys: str, value: Any) -> Edit:
    def change(d: dict[str, Any]) -> None:
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


def _swap_labels(d: dict[str, Any]) -> None:
    d["labels"][0], d["labels"][1] = d["labels"][1], d["labels"][0]


def _flip_calibration(d: dict[str, Any]) -> None:
    d["calibration"]["a"] = {k: -v for k, v in d["calibration"]["a"].items()}  # high logits now give low scores


# The recipes of row 8: (id, edit, the field a tampering changes, the field that is invalid (None: valid value)).
RECIPES: list[tuple[str, Edit, str, str | None]] = [
    ("threshold_nan_string", _set("thresholds", "pneumonia", "balanced", "threshold", value="NaN"),
     "thresholds.pneumonia", "thresholds.pneumonia.balanced.threshold"),
    ("threshold_nan_number", _set("thresholds", "pneumonia", "balanced", "threshold", value=float("nan")),
     "thresholds.pneumonia", "thresholds.pneumonia.balanced.threshold"),
    ("swapped_labels", _swap_labels, "labels", None),
    ("flipped_calibration", _flip_calibration, "calibration.a", None),
    ("onnx_file_dotdot", _set("onnx_file", value="../../etc/passwd"), "onnx_file", "onnx_file"),
    ("onnx_file_absolute", _set("onnx_file", value="/etc/passwd"), "onnx_file", "onnx_file"),
    ("model_card_dotdot", _set("model_card", value="../../etc/passwd"), "model_card", "model_card"),
    ("model_card_absolute", _set("model_card", value="/etc/passwd"), "model_card", "model_card"),
]
RECIPE_IDS = [r[0] for r in RECIPES]


@pytest.mark.parametrize(("edit", "changed"), [(r[1], r[2]) for r in RECIPES], ids=RECIPE_IDS)
def test_a_tampered_manifest_is_refused_naming_what_changed(man: Path, edit: Edit, changed: str) -> None:
    original = load_manifest(man).integrity
    _edit(man, edit, seal=False)
    with pytest.raises(ModelError, match="does not match its integrity value") as exc:
        load_manifest(man)
    message = str(exc.value)
    assert f"changed since it was sealed: {changed}" in message and original[:12] in message
    assert "Restore the original manifest" in message and f"cxrtriage models seal {man.parent}" in message
    with pytest.raises(ModelError, match="does not match its integrity value"):
        load_model(man)
    result = verify_model(man)
    assert not result.ok and "integrity" in {c.part for c in result.failed}


@pytest.mark.parametrize(("edit", "field"), [(r[1], r[3]) for r in RECIPES if r[3]],
                         ids=[r[0] for r in RECIPES if r[3]])
def test_an_invalid_edit_is_refused_even_when_resealed(man: Path, edit: Edit, field: str) -> None:
    _edit(man, edit, seal=True)
    with pytest.raises(ModelError, match=f"manifest field '{field}'"):
        load_manifest(man)
    with pytest.raises(ModelError, match=f"manifest field '{field}'"):
        seal_manifest(man)
    result = verify_model(man)
    assert [(c.part, c.ok) for c in result.checks][1:3] == [("integrity", True), ("fields", False)]


@pytest.mark.parametrize(("edit", "changed"), [(r[1], r[2]) for r in RECIPES if r[3] is None],
                         ids=[r[0] for r in RECIPES if r[3] is None])
def test_a_valid_edit_resealed_by_its_owner_loads_with_a_new_integrity(man: Path, edit: Edit, changed: str) -> None:
    original = load_manifest(man).integrity
    _edit(man, edit, seal=False)
    preview = seal_manifest(man, dry_run=True)
    assert not preview.written and preview.changed == (changed,)
    with pytest.raises(ModelError):  # a dry run writes nothing
        load_manifest(man)
    result = seal_manifest(man)
    assert result.written and result.before == original and result.changed == (changed,)
    clf = load_model(man, device="cpu")
    assert isinstance(clf, Classifier)
    assert clf.manifest.integrity == result.after != original  # the results of the edit can be told apart
    assert verify_model(man).ok
    again = seal_manifest(man)
    assert not again.written and again.changed == ()


def test_the_pneumonia_threshold_edit_of_the_issue(man: Path) -> None:
    """Thresholds "NaN" made a pneumonia 0.92 image `normal` (score >= NaN is false): now refused, sealed or not."""
    for seal in (False, True):
        _edit(man, _set("thresholds", "pneumonia", "balanced", "threshold", value="NaN"), seal=seal)
        with pytest.raises(ModelError, match="pneumonia"):
            load_model(man)
    # the owner's real intent, a lower threshold, is accepted once re-sealed
    _edit(man, _set("thresholds", "pneumonia", "balanced", "threshold", value=0.3), seal=False)
    assert seal_manifest(man).changed == ("thresholds.pneumonia",)
    assert load_manifest(man).thresholds["pneumonia"].balanced.threshold == 0.3


def test_links_leading_out_of_the_model_folder_are_refused(man: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(man.parent / "model.onnx", outside / "model.onnx")
    os.symlink(outside / "model.onnx", man.parent / "model.onnx")
    with pytest.raises(ModelError, match="'onnx_file' .*is a link that leads outside the model folder"):
        load_manifest(man)
    os.symlink("/etc/passwd", man.parent / "card.md")
    os.remove(man.parent / "model.onnx")
    shutil.move(outside / "model.onnx", man.parent / "model.onnx")
    _edit(man, _set("model_card", value="card.md"), seal=True)
    with pytest.raises(ModelError, match="'model_card' .*leads outside"):
        load_manifest(man)


def test_a_linked_model_folder_and_links_inside_it_are_fine(man: Path, tmp_path: Path) -> None:
    (man.parent / "MODEL_CARD.md").write_text("# tiny\n")
    os.symlink("MODEL_CARD.md", man.parent / "card.md")
    _edit(man, _set("model_card", value="card.md"), seal=True)
    os.symlink(man.parent, tmp_path / "linked")
    m = load_manifest(tmp_path / "linked" / "manifest.json")
    assert m.model_card == (man.parent / "MODEL_CARD.md").resolve()
    assert isinstance(load_model(tmp_path / "linked", device="cpu"), Classifier)


# Every other field that decides something: (id, edit, the field named in the error).
INVALID: list[tuple[str, Edit, str]] = [
    ("labels_duplicate", _set("labels", value=["abnormal", "abnormal", "effusion"]), "labels"),
    ("labels_empty", _set("labels", value=[]), "labels"),
    ("labels_a_string", _set("labels", value="abc"), "labels"),
    ("label_path", _set("labels", value=["../x", "pneumonia", "effusion"]), r"labels\[0\]"),
    ("label_blank", _set("labels", value=["abnormal", "", "effusion"]), r"labels\[1\]"),
    ("label_not_text", _set("labels", value=["abnormal", 7, "effusion"]), r"labels\[1\]"),
    ("threshold_above_1", _set("thresholds", "effusion", "rule_out", "threshold", value=1.5),
     "thresholds.effusion.rule_out.threshold"),
    ("threshold_negative", _set("thresholds", "effusion", "balanced", "threshold", value=-0.1),
     "thresholds.effusion.balanced.threshold"),
    ("threshold_infinite", _set("thresholds", "effusion", "balanced", "threshold", value=float("inf")),
     "thresholds.effusion.balanced.threshold"),
    ("threshold_bool", _set("thresholds", "effusion", "balanced", "threshold", value=True),
     "thresholds.effusion.balanced.threshold"),
    ("threshold_text_number", _set("thresholds", "effusion", "balanced", "threshold", value="0.5"),
     "thresholds.effusion.balanced.threshold"),
    ("threshold_no_point", _set("thresholds", "effusion", value={}), "thresholds.effusion"),
    ("threshold_unknown_point", _set("thresholds", "effusion", value={"rule-out": {"threshold": 0.5}}),
     "thresholds.effusion.rule-out"),
    ("threshold_unknown_label", _set("thresholds", "pneumothorax", value={"rule_out": {"threshold": 0.1},
                                                                          "balanced": {"threshold": 0.5}}),
     "thresholds.pneumothorax"),
    ("sensitivity_out_of_range", _set("thresholds", "effusion", "balanced", "sensitivity", value=2),
     "thresholds.effusion.balanced.sensitivity"),
    ("calibration_a_nan", _set("calibration", "a", "pneumonia", value=float("nan")), "calibration.a.pneumonia"),
    ("calibration_b_text", _set("calibration", "b", "effusion", value="Infinity"), "calibration.b.effusion"),
    ("calibration_a_zero", _set("calibration", "a", "abnormal", value=0), "calibration.a.abnormal"),
    ("calibration_missing_label", _set("calibration", "b", value={"abnormal": 0.0}), "calibration.b"),
    ("calibration_unknown_label", _set("calibration", "a", "nodule", value=1.0), "calibration.a.nodule"),
    ("calibration_method", _set("calibration", "method", value="isotonic"), "calibration.method"),
    ("preprocessing_size_zero", _set("preprocessing", "size", value=0), "preprocessing"),
    ("preprocessing_size_text", _set("preprocessing", "size", value="16"), "preprocessing"),
    ("preprocessing_size_float", _set("preprocessing", "size", value=16.5), "preprocessing"),
    ("preprocessing_geometry", _set("preprocessing", "geometry", value="fisheye"), "preprocessing"),
    ("preprocessing_percentiles_nan", _set("preprocessing", "percentiles", value=[float("nan"), 99.0]), "preprocessing"),
    ("preprocessing_output_range_nan", _set("preprocessing", "output_range", value=[-1.0, float("nan")]),
     "preprocessing"),
    ("preprocessing_pad_nan", _set("preprocessing", "pad_value", value=float("nan")), "preprocessing"),
    ("input_size_disagrees", _set("input", "shape", value=[None, 1, 8, 8]), r"input.shape\[2\]"),
    ("input_channels", _set("input", "shape", value=[None, 3, 16, 16]), r"input.shape\[1\]"),
    ("input_rank", _set("input", "shape", value=[None, 16, 16]), "input.shape"),
    ("sha256_not_hex", _set("sha256", value="not-a-hash"), "sha256"),
    ("name_blank", _set("name", value=" "), "name"),
    ("version_control_chars", _set("version", value="1\x00"), "version"),
    ("outputs_no_logits", _set("outputs", value={"features": "features"}), "outputs"),
    ("head_transposed_text", _set("head", "transposed", value="yes"), "head.transposed"),
    ("task_unknown", _set("task", value="detection"), "task"),
]


@pytest.mark.parametrize(("edit", "field"), [(e, f) for _, e, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_every_deciding_field_is_validated_and_named(man: Path, edit: Edit, field: str) -> None:
    _edit(man, edit, seal=True)  # sealed: what is refused is the value, not the edit
    with pytest.raises(ModelError, match=f"manifest field '{field}'") as exc:
        load_manifest(man)
    assert exc.value.exit_code == 3  # a model problem, even in the preprocessing recipe


def test_labels_without_thresholds_are_allowed_and_left_to_triage(man: Path) -> None:
    """The training recipe writes no thresholds for a label its validation split cannot set them for."""
    data = _edit(man, lambda d: d["thresholds"].pop("effusion"), seal=True)
    assert set(load_manifest(man).thresholds) == set(data["labels"]) - {"effusion"}


def test_a_repeated_key_is_refused(man: Path) -> None:
    text = man.read_text().replace('"version": "0.0.1-test",', '"version": "0.0.1-test", "version": "9",')
    man.write_text(text)
    with pytest.raises(ModelError, match="key 'version' is given twice"):
        read_manifest_data(man)


def test_a_file_that_cannot_be_a_manifest_is_refused_cheaply(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelError, match="nested too deeply"):
        read_manifest_data(deep)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match="not a regular file"):
        read_manifest_data(fifo)
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(17 << 20)
    with pytest.raises(ModelError, match="17 MiB, more than the 16 MiB"):
        read_manifest_data(big)


def test_an_unsealed_manifest_is_refused_with_how_to_seal_it(man: Path) -> None:
    data = _data(man)
    del data["integrity"]
    man.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"'integrity' is missing.*models seal"):
        load_manifest(man)
    data["integrity"] = "0" * 64  # not the object the seal is
    man.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="'integrity' is not an object"):
        load_manifest(man)
    assert seal_manifest(man).changed == ("(not sealed before)",)
    assert load_manifest(man).integrity == manifest_digest(data)


def test_reformatting_keeps_the_seal(man: Path) -> None:
    """The seal covers the canonical JSON, not the bytes: indentation, key order and CRLF do not matter."""
    sealed = load_manifest(man).integrity
    data = _data(man)
    man.write_bytes(json.dumps(dict(reversed(list(data.items()))), indent=4).replace("\n", "\r\n").encode())
    assert load_manifest(man).integrity == sealed
    man.write_text(json.dumps(data, separators=(",", ":")))
    assert load_manifest(man).integrity == sealed


def test_seal_covers_the_onnx_sha256_and_never_adopts_a_replaced_network(man: Path) -> None:
    onnx_path = man.parent / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\x00")
    with pytest.raises(ModelError, match="sha256 .* does not match the manifest"):
        seal_manifest(man)
    _edit(man, _set("sha256", value=sha256_file(onnx_path)), seal=False)  # pointing the manifest at it: an edit
    with pytest.raises(ModelError, match="changed since it was sealed: sha256"):
        load_manifest(man)


def test_changed_fields_lists_entries_added_and_removed() -> None:
    before = field_digests({"a": 1, "thresholds": {"x": 1, "y": 2}, "gone": 3})
    after = field_digests({"a": 1, "thresholds": {"x": 1, "y": 5, "z": 1}, "new": [1]})
    assert changed_fields(before, after) == ["gone (removed)", "new (added)", "thresholds.y", "thresholds.z (added)"]
    assert changed_fields({"labels": "0" * 16}, {"labels": "1" * 16}) == ["labels"]


def test_label_count_is_checked_against_the_graph_even_when_symbolic(man: Path) -> None:
    onnx_path = man.parent / "model.onnx"
    model = onnx.load(onnx_path)
    dim = model.graph.output[0].type.tensor_type.shape.dim[1]
    dim.ClearField("dim_value")
    dim.dim_param = "L"  # the label axis is no longer known from the graph's declaration
    onnx.save(model, onnx_path)
    data = _data(man)
    data["sha256"] = sha256_file(onnx_path)
    edit_manifest(man, data)
    assert isinstance(load_model(man, device="cpu"), Classifier)
    data["labels"] = ["abnormal", "pneumonia"]
    data["calibration"] = None
    data["thresholds"] = {}
    edit_manifest(man, data)
    with pytest.raises(ModelError, match="'labels' lists 2 labels, but the ONNX graph's output 'logits' gives 3"):
        load_model(man, device="cpu")
    with pytest.raises(ModelError, match="lists 2 labels"):
        seal_manifest(man)
    assert [c.part for c in verify_model(man).failed] == ["graph"]


def test_input_size_is_checked_against_the_graph(man: Path) -> None:
    _edit(man, lambda d: (d["preprocessing"].update(size=32), d["input"].update(shape=[None, 1, 32, 32])), seal=True)
    with pytest.raises(ModelError, match=r"'preprocessing.size' is 32, but the ONNX graph's input 'image' has 16"):
        load_model(man, device="cpu")


def test_segmenter_labels_are_sealed_too(tmp_path: Path) -> None:
    seg = make_tiny_segmenter(tmp_path / "s")
    data = _data(seg)
    data["labels"] = ["background", "left_lung", "right_lung"]  # right and left swapped
    edit_manifest(seg, data, seal=False)
    with pytest.raises(ModelError, match="changed since it was sealed: labels"):
        load_model(seg)
    data["labels"] = ["background", "lungs"]
    edit_manifest(seg, data)
    with pytest.raises(ModelError, match="'labels' lists 2 labels, but the ONNX graph's output 'masks' gives 3"):
        load_model(seg, device="cpu")


def test_verify_names_each_part(man: Path) -> None:
    assert [(c.part, c.ok) for c in verify_model(man).checks] == [
        ("manifest", True), ("integrity", True), ("fields", True), ("onnx sha256", True), ("graph", True)]
    onnx_path = man.parent / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\x00")
    assert [(c.part, c.ok) for c in verify_model(man).checks] == [
        ("manifest", True), ("integrity", True), ("fields", True), ("onnx sha256", False), ("graph", None)]
    man.write_text("{not json")
    assert [(c.part, c.ok) for c in verify_model(man).checks] == [
        ("manifest", False), ("integrity", None), ("fields", None), ("onnx sha256", None), ("graph", None)]
