"""Reading LABELS.csv and matching its rows to results rows (file name, path suffix, SOP Instance UID)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrtriage.errors import InputError
from cxrtriage.evaluate.data import match_labels, read_labels
from cxrtriage.results import from_row


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_label_columns_matched_ignoring_case_and_separators(tmp_path: Path) -> None:
    p = write(tmp_path / "labels.csv",
              "Image,Pleural-Effusion,PNEUMONIA,sex,Hernia,age\n"
              "a.png,1,0,F,0,40\n"
              "b.png,0,,M,1,61\n"
              "c.png,true,no,M,0,\n")
    t = read_labels(p, ["pleural_effusion", "pneumonia", "pneumothorax"])
    assert t.label_columns == {"pleural_effusion": "Pleural-Effusion", "pneumonia": "PNEUMONIA"}
    np.testing.assert_array_equal(t.truth["pleural_effusion"], [1, 0, 1])
    assert np.isnan(t.truth["pneumonia"][1]) and t.truth["pneumonia"][2] == 0
    assert t.subgroup_columns == ("sex", "Hernia", "age")
    assert t.unused_label_like == ("Hernia",)


def test_invalid_label_value_names_row_and_column(tmp_path: Path) -> None:
    p = write(tmp_path / "labels.csv", "image,effusion\na.png,1\nb.png,maybe\n")
    with pytest.raises(InputError, match=r"row 3, column 'effusion': value 'maybe' is not a label"):
        read_labels(p, ["effusion"])


def test_labels_csv_without_image_column(tmp_path: Path) -> None:
    p = write(tmp_path / "labels.csv", "file,effusion\na.png,1\n")
    with pytest.raises(InputError, match="needs an 'image' column"):
        read_labels(p, ["effusion"])


def test_matching_by_name_path_suffix_and_uid(tmp_path: Path) -> None:
    results = [
        {"path": "/data/site/NORMAL/IM-0001.jpeg", "status": "scored", "sop_instance_uid": ""},
        {"path": "/data/site/PNEUMONIA/IM-0001.jpeg", "status": "scored", "sop_instance_uid": ""},
        {"path": "/data/site/other/Unique.PNG", "status": "scored", "sop_instance_uid": ""},
        {"path": "/data/dicom/x.dcm", "status": "scored", "sop_instance_uid": "1.2.826.0.1.3680043.8.498.1"},
        {"path": "/data/dicom/y.dcm", "status": "excluded", "sop_instance_uid": "1.2.826.0.1.3680043.8.498.2"},
        {"path": "/data/never-labelled.png", "status": "scored", "sop_instance_uid": ""},
    ]
    p = write(tmp_path / "labels.csv",
              "image,effusion\n"
              "normal/im-0001.jpeg,0\n"            # path suffix, case-insensitive
              "site\\PNEUMONIA\\IM-0001.jpeg,1\n"  # Windows separators
              "unique.png,1\n"                     # file name alone, unique
              "1.2.826.0.1.3680043.8.498.1,0\n"    # SOP Instance UID in the image column
              "1.2.826.0.1.3680043.8.498.2,1\n"    # matched but not scored
              "IM-0001.jpeg,1\n"                   # ambiguous by name
              "missing.png,0\n"                    # no such file
              "unique.png,0\n")                    # duplicate
    t = read_labels(p, ["effusion"])
    m = match_labels([from_row(r) for r in results], t)
    assert sorted(m.pairs) == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    assert m.how == {"path": 2, "file name": 1, "sop_instance_uid": 2}
    reasons = dict(m.unmatched_labels)
    assert reasons[5].startswith("ambiguous: 2 results rows match by file name")
    assert reasons[6].startswith("no results row")
    assert reasons[7].startswith("duplicate: labels row 4 already matched /data/site/other/Unique.PNG")
    assert m.unmatched_results == [5]


def test_uid_column_takes_precedence(tmp_path: Path) -> None:
    results = [{"path": "a/1.dcm", "status": "scored", "sop_instance_uid": "1.2.3.4"},
               {"path": "b/1.dcm", "status": "scored", "sop_instance_uid": "1.2.3.5"}]
    p = write(tmp_path / "labels.csv", "image,sop_instance_uid,effusion\n1.dcm,1.2.3.5,1\n")
    m = match_labels([from_row(r) for r in results], read_labels(p, ["effusion"]))
    assert m.pairs == [(1, 0)] and m.how == {"sop_instance_uid": 1}


def test_findings_include_the_01_columns_that_name_no_model_label(tmp_path: Path) -> None:
    from cxrtriage.triage import load_policy

    p = write(tmp_path / "labels.csv",
              "image,effusion,Pneumothorax,edema,no_finding,sex,is_pa\n"
              "a.png,0,1,-1,0,F,1\n"        # CheXpert's -1 (uncertain) is unknown, not a reason to drop the column
              "b.png,0,0,0,1,M,0\n"
              "c.png,1,,uncertain,0,M,1\n")
    t = read_labels(p, ["effusion", "pneumonia"])
    assert t.unused_label_like == ("Pneumothorax", "edema", "no_finding", "is_pa")
    assert t.subgroup_columns == ("Pneumothorax", "edema", "no_finding", "sex", "is_pa")  # still usable with --by
    policy = load_policy()  # ignores no_finding: not a finding
    # a 0/1 column that is no finding (is_pa) counts too, the cautious way; the policy's [labels] ignore leaves it out
    assert t.finding_names(policy) == ["effusion", "Pneumothorax", "edema", "is_pa"]
    assert t.findings(0, policy) == {"effusion": 0.0, "Pneumothorax": 1.0, "edema": pytest.approx(np.nan, nan_ok=True),
                                     "is_pa": 1.0}
    assert np.isnan(t.findings(2, policy)["Pneumothorax"]) and t.findings(2, policy)["effusion"] == 1.0
