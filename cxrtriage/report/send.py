"""Send DICOM results to a PACS with C-STORE (pynetdicom SCU); every file gets a status, none crashes the run."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Destination:
    host: str
    port: int
    called_aet: str = "ANY-SCP"
    calling_aet: str = "CXRTRIAGE"


@dataclass(frozen=True, slots=True)
class SendResult:
    path: Path
    ok: bool
    status: str  # "0x0000" (the C-STORE status), or why the file was not sent: "not sent: <cause>; <what to check>"


def parse_destination(hostport: str, *, called_aet: str = "ANY-SCP", calling_aet: str = "CXRTRIAGE") -> Destination:
    """``HOST:PORT`` (IPv6 as ``[::1]:104``) plus AE titles → Destination, or ConfigError saying what is wrong."""
    m = re.fullmatch(r"\[(?P<h6>[^\]]+)\]:(?P<p6>\d+)|(?P<h>[^:\s]+):(?P<p>\d+)", hostport.strip())
    if not m:
        raise ConfigError(f"--send '{hostport}': expected HOST:PORT, e.g. pacs.example.org:104 or 127.0.0.1:11112")
    host = m.group("h6") or m.group("h")
    port = int(m.group("p6") or m.group("p"))
    if not 0 < port < 65536:
        raise ConfigError(f"--send '{hostport}': port {port} is outside 1-65535")
    for name, aet in (("--called-aet", called_aet), ("--aet", calling_aet)):
        if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet or aet.strip() != aet:
            raise ConfigError(f"{name} '{aet}': an AE title is 1-16 ASCII characters without backslash or edge spaces")
    return Destination(host=host, port=port, called_aet=called_aet, calling_aet=calling_aet)


def send_files(files: list[Path], dest: Destination, *, timeout: float = 30.0) -> list[SendResult]:
    """C-STORE each file over one association; a refused association or a failed file is reported, not raised."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    if not files:
        return []
    datasets: list[tuple[Path, Any]] = []
    results: list[SendResult] = []
    contexts: dict[tuple[str, str], object] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:
            results.append(SendResult(f, False, f"not sent: cannot read it ({type(exc).__name__})"))
            continue
        key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        contexts.setdefault(key, build_context(key[0], [key[1], "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]))
        datasets.append((f, ds))
    ae = AE(ae_title=dest.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = list(contexts.values())[:128]  # type: ignore[assignment]
    with _connect_errors() as connect_errors:
        try:
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.called_aet)
        except Exception as exc:  # DNS failure and the like
            connect_errors.append(f"{type(exc).__name__}: {exc}")
            assoc = None
    if assoc is None or not assoc.is_established:
        why = _association_failure(assoc, connect_errors, dest, timeout)
        return results + [SendResult(f, False, f"not sent: {why}") for f, _ in datasets]
    accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    try:
        for f, ds in datasets:
            try:
                _fit_transfer_syntax(ds, accepted)
                status = assoc.send_c_store(ds)
            except Exception as exc:
                results.append(SendResult(f, False, f"not sent: {type(exc).__name__}: {exc}"))
                continue
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == -1:
                results.append(SendResult(f, False, f"not sent: no response from {_where(dest)} (connection lost or "
                                                    "timed out)"))
            elif code == 0x0000 or code in (0xB000, 0xB007, 0xB006):  # success, or warning (stored with coercion)
                results.append(SendResult(f, True, f"0x{code:04X}"))
            else:
                results.append(SendResult(f, False, f"not sent: {_where(dest)} refused it (status 0x{code:04X})"))
    finally:
        assoc.release()
    return results


def send_errors(sent: Iterable[SendResult], *, named: int = 3) -> list[str]:
    """One line per cause of the files that were not sent. A PACS that cannot be reached fails every file for the
    same reason: that is said once, with the number of files and the first ``named`` of their names."""
    by_cause: dict[str, list[str]] = {}
    for r in sent:
        if not r.ok:
            by_cause.setdefault(r.status, []).append(r.path.name)
    lines = []
    for cause, names in by_cause.items():
        if len(names) == 1:
            lines.append(f"{names[0]}: {cause}")
            continue
        distinct = list(dict.fromkeys(names))
        shown = ", ".join(distinct[:named]) + (f" and {len(distinct) - named} more" if len(distinct) > named else "")
        lines.append(f"{len(names)} DICOM files ({shown}): {cause}")
    return lines


def _where(dest: Destination) -> str:
    return f"{dest.host}:{dest.port} ({dest.called_aet})"


# pynetdicom says why a TCP connection failed only in two ERROR lines of its own log (the association is then just
# "aborted"); they are taken from its log instead of being printed, and the cause goes into each file's status.
_TRANSPORT_LOGGER = "pynetdicom.transport"
_TCP_ERROR = "TCP Initialisation Error: "


class _ConnectErrors(logging.Filter):
    """Keeps the causes of failed TCP connections that pynetdicom logs, and drops those lines from the log."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_TCP_ERROR):
            self.errors.append(message[len(_TCP_ERROR):])
            return False
        return not message.startswith("Association request failed: unable to connect to remote")


@contextmanager
def _connect_errors() -> Iterator[list[str]]:
    """The causes of the failed TCP connections that pynetdicom logs inside the block."""
    catcher = _ConnectErrors()
    logger = logging.getLogger(_TRANSPORT_LOGGER)
    logger.addFilter(catcher)
    try:
        yield catcher.errors
    finally:
        logger.removeFilter(catcher)


def _association_failure(assoc: Any, connect_errors: list[str], dest: Destination, timeout: float) -> str:
    """Why no association was made with ``dest``, in words, with what to check."""
    where = f"{dest.host}:{dest.port}"
    if assoc is not None and assoc.is_rejected:
        return (f"association rejected by {_where(dest)}; check --called-aet and that the PACS accepts our AE title "
                f"'{dest.calling_aet}' (--aet)")
    if connect_errors:
        cause = re.sub(r"^\[Errno -?\d+\]\s*", "", connect_errors[-1]).strip()
        low = cause.lower()
        if "refused" in low:
            return f"connection refused by {where}; is the PACS listening there?"
        if "timed out" in low:
            return f"no connection to {where} within {timeout:g} s; is the host reachable and the port open?"
        if "name or service not known" in low or "nodename nor servname" in low or "gaierror" in low:
            return f"host '{dest.host}' not found ({cause}); check the name in --send"
        return f"cannot connect to {where} ({cause}); is the PACS reachable there?"
    if assoc is not None and assoc.is_aborted:
        return (f"association aborted by {_where(dest)}; is it a DICOM node, and does it accept our AE title "
                f"'{dest.calling_aet}' (--aet)?")
    return f"no answer from {_where(dest)} within {timeout:g} s; is it a DICOM node?"


def _fit_transfer_syntax(ds: Any, accepted: set[tuple[str, str]]) -> None:
    """Decompress ``ds`` (in memory) when the peer accepted its SOP class only uncompressed.

    The Secondary Captures are JPEG compressed; a PACS that takes no JPEG still gets them, as the same instance in
    Explicit VR Little Endian (a change of transfer syntax keeps the SOP Instance UID, PS3.5 10.1).
    """
    sop, ts = str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)
    if (sop, ts) in accepted or not ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    if any(a == sop for a, _ in accepted):
        ds.decompress(generate_instance_uid=False)
