"""C-STORE to a PACS: a real pynetdicom Storage SCP on 127.0.0.1 (random port), and every way sending can fail."""

from __future__ import annotations

import logging
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
from cxrtriage.report.send import Destination, SendResult, parse_destination, send_errors, send_files


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


def test_wrong_called_aet_and_closed_port_are_reported_not_raised(dicom_files: list[Path], scp: Scp,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    rejected = send_files(dicom_files[:2], Destination("127.0.0.1", scp.port, called_aet="OTHER"))
    assert [r.ok for r in rejected] == [False, False]
    assert all(r.status == f"not sent: association rejected by 127.0.0.1:{scp.port} (OTHER); check --called-aet and "
               "that the PACS accepts our AE title 'CXRTRIAGE' (--aet)" for r in rejected), rejected
    port = _free_port()
    with caplog.at_level(logging.DEBUG):
        closed = send_files(dicom_files[:2], Destination("127.0.0.1", port), timeout=5)
    # the real cause, said once (was: "not sent: association aborted by ...", the cause only in pynetdicom's log)
    assert [r.status for r in closed] == [f"not sent: connection refused by 127.0.0.1:{port}; is the PACS listening "
                                          "there?"] * 2
    assert not [r for r in caplog.records if "TCP Initialisation Error" in r.getMessage()
                or "unable to connect to remote" in r.getMessage()]  # taken from pynetdicom's log, not printed
    assert scp.received == []
    logging.getLogger("pynetdicom.transport").error("TCP Initialisation Error: later")  # the log is left as it was
    assert "TCP Initialisation Error: later" in caplog.text


def test_files_not_sent_are_one_line_per_cause(tmp_path: Path) -> None:
    refused = "not sent: connection refused by pacs:104; is the PACS listening there?"
    sent = [SendResult(tmp_path / "s1" / f"{k}_001.dcm", False, refused) for k in ("sr", "sc", "seg")]
    sent += [SendResult(tmp_path / "s2" / f"{k}_001.dcm", False, refused) for k in ("sr", "sc")]
    sent += [SendResult(tmp_path / "s2" / "seg_001.dcm", False, "not sent: pacs:104 (X) refused it (status 0xA700)"),
             SendResult(tmp_path / "s2" / "report_pdf.dcm", True, "0x0000")]
    assert send_errors(sent) == [
        f"5 DICOM files (sr_001.dcm, sc_001.dcm, seg_001.dcm): {refused}",
        "seg_001.dcm: not sent: pacs:104 (X) refused it (status 0xA700)"]
    assert send_errors(sent, named=2) == [f"5 DICOM files (sr_001.dcm, sc_001.dcm and 1 more): {refused}",
                                          "seg_001.dcm: not sent: pacs:104 (X) refused it (status 0xA700)"]
    assert send_errors(sent[-1:]) == []


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
    # the two SEGs the PACS refused: one line, "not sent" said once
    assert res.output.count("not sent") == 1 and res.output.count("sent sr_001.dcm") == 2
    assert f"2 DICOM files (seg_001.dcm): not sent: 127.0.0.1:{scp.port} (TESTPACS) refused it (status 0xA700)" \
        in " ".join(res.output.split())
    assert (out / "report" / "index.html").is_file() and not list((out / "report").glob("*.pdf"))
    assert len(scp.received) == 6
    ok = runner.invoke(app, ["report", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "4 HTML and 4 PDF study reports" in ok.output
    bad = runner.invoke(app, ["report", str(out), "--dicom", "--send", "nohostport"])
    assert isinstance(bad.exception, ConfigError)
