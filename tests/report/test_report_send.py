"""C-STORE to a PACS: a real pynetdicom Storage SCP on 127.0.0.1 (random port), and every way sending can fail."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts, evt
from report_fixtures import make_results
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.errors import ConfigError
from cxrtriage.report.batch import build_reports
from cxrtriage.report.send import Destination, parse_destination, send_files


class Scp:
    def __init__(self, ae_title: str, *, refuse_sop_class: str | None = None) -> None:
        self.received: list[Any] = []
        self.refuse = refuse_sop_class
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        ae.supported_contexts = StoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        assert self.server is not None
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        if self.refuse and ds.SOPClassUID == self.refuse:
            return 0xA700  # out of resources: refused
        self.received.append(ds)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    summary = build_reports(make_results(tmp_path_factory.mktemp("send")), pdf=False, dicom=True)
    assert len(summary.dicom_files) == 8
    return summary.dicom_files


@pytest.fixture
def scp() -> Iterator[Scp]:
    s = Scp("TESTPACS", refuse_sop_class="1.2.840.10008.5.1.4.1.1.66.4")  # refuses SEG, like a PACS without SEG
    yield s
    s.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_send_reports_each_file_and_the_pacs_gets_them(dicom_files: list[Path], scp: Scp) -> None:
    results = send_files(dicom_files, Destination("127.0.0.1", scp.port, called_aet="TESTPACS"))
    assert len(results) == len(dicom_files)
    ok = {r.path.name for r in results if r.ok}
    refused = [r for r in results if not r.ok]
    assert {r.path.name for r in refused} == {"seg_001.dcm"} and all("0xA700" in r.status for r in refused)
    assert ok == {"sr_001.dcm", "sc_001.dcm", "report_pdf.dcm"}
    sent_uids = {pydicom.dcmread(p).SOPInstanceUID for p in dicom_files if p.name != "seg_001.dcm"}
    assert {str(d.SOPInstanceUID) for d in scp.received} == sent_uids


def test_wrong_called_aet_and_closed_port_are_reported_not_raised(dicom_files: list[Path], scp: Scp) -> None:
    rejected = send_files(dicom_files[:2], Destination("127.0.0.1", scp.port, called_aet="OTHER"))
    assert [r.ok for r in rejected] == [False, False] and all("rejected" in r.status for r in rejected)
    closed = send_files(dicom_files[:2], Destination("127.0.0.1", _free_port()), timeout=5)
    assert [r.ok for r in closed] == [False, False] and all("not sent" in r.status for r in closed)
    assert scp.received == []


def test_parse_destination() -> None:
    d = parse_destination("127.0.0.1:11112", called_aet="PACS", calling_aet="ME")
    assert (d.host, d.port, d.called_aet, d.calling_aet) == ("127.0.0.1", 11112, "PACS", "ME")
    assert parse_destination("[::1]:104").host == "::1"
    for bad in ("pacs", "pacs:0", "pacs:99999", "a:b"):
        with pytest.raises(ConfigError, match="--send"):
            parse_destination(bad)
    with pytest.raises(ConfigError, match="AE title"):
        parse_destination("h:104", called_aet="X" * 17)


@pytest.mark.slow
def test_cli_report_dicom_send(tmp_path: Path, scp: Scp) -> None:
    out = make_results(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(out), "--dicom", "--no-pdf", "--send", f"127.0.0.1:{scp.port}",
                              "--called-aet", "TESTPACS", "--aet", "CXRT"])
    assert res.exit_code == 1, res.output  # the PACS refused the SEGs: listed, exit 1
    assert "4 HTML and 0 PDF study reports" in res.output and "8 DICOM files" in res.output
    assert res.output.count("not sent") == 2 and res.output.count("sent sr_001.dcm") == 2
    assert (out / "report" / "index.html").is_file() and not list((out / "report").glob("*.pdf"))
    assert len(scp.received) == 6
    ok = runner.invoke(app, ["report", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "4 HTML and 4 PDF study reports" in ok.output
    bad = runner.invoke(app, ["report", str(out), "--dicom", "--send", "nohostport"])
    assert isinstance(bad.exception, ConfigError)
