"""`cxrtriage predict --ray`: what the command says before any cluster is involved (Ray missing, options that a
cluster run cannot honour). The runs themselves are tested on a real cluster in tests/pipeline/test_cluster_ray.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from factories import write_dicom
from typer.testing import CliRunner

from cxrtriage.cli.app import app


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_without_ray_installed_it_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dicom(tmp_path / "in" / "a.dcm")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as it does where Ray is not installed
    for name in [m for m in sys.modules if m.startswith("cxrtriage.pipeline.cluster.")]:
        monkeypatch.delitem(sys.modules, name)
    code, output = _invoke("predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--ray", "local")
    assert code == 4, output
    assert "error: --ray needs Ray Data, which is not installed here (ray is missing): pip install 'cxrtriage[ray]'" \
        in output
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow  # imports Ray (seconds)
@pytest.mark.parametrize(("option", "named"), [
    (["--heatmaps"], "--heatmaps"), (["--lungs"], "--lungs"), (["--report", "--no-pdf"], "--report"),
])
def test_options_that_write_images_are_refused_before_any_cluster(tmp_path: Path, option: list[str], named: str) -> None:
    pytest.importorskip("ray", reason="the refusal comes from the Ray runner (pip install -e '.[ray]')")
    write_dicom(tmp_path / "in" / "a.dcm")
    code, output = _invoke("predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *option,
                           "--ray", "127.0.0.1:9")  # no cluster there: refused before connecting
    assert code == 4, output
    assert "error: --ray: " in output and named in output
    assert "run `cxrtriage report OUT` on the finished results" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # imports Ray (seconds)
def test_workers_is_refused_with_ray(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the refusal comes from the Ray runner (pip install -e '.[ray]')")
    write_dicom(tmp_path / "in" / "a.dcm")
    code, output = _invoke("predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--workers", "2",
                           "--ray", "127.0.0.1:9")
    assert code == 4 and "--workers sets this machine's decode processes" in output, output


def test_help_documents_the_option() -> None:
    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    assert "--ray ADDRESS" in text and "'local' starts Ray on this machine" in text
    assert "pip install 'cxrtriage[ray]'" in text  # the brackets are text, not rich markup
