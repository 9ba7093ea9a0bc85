"""Send DICOM results to a PACS with C-STORE (pynetdicom SCU); every file gets a status, none crashes the run."""

from __future__ import annotations

import logging
import re
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
    status: str  # "0x0000" or the failure status / reason


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
            results.append(SendResult(f, False, f"not sent: cannot read ({type(exc).__name__})"))
            continue
        key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        contexts.setdefault(key, build_context(key[0], [key[1], "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]))
        datasets.append((f, ds))
    ae = AE(ae_title=dest.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = list(contexts.values())[:128]  # type: ignore[assignment]
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.called_aet)
    except Exception as exc:  # DNS failure and the like
        why = f"not sent: association failed ({type(exc).__name__}: {exc})"
        return results + [SendResult(f, False, why) for f, _ in datasets]
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else ("aborted" if assoc.is_aborted else "no answer")
        return results + [SendResult(f, False, f"not sent: association {why} by {dest.host}:{dest.port} "
                                                f"({dest.called_aet})") for f, _ in datasets]
    accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    try:
        for f, ds in datasets:
            try:
                _fit_transfer_syntax(ds, accepted)
                status = assoc.send_c_store(ds)
            except Exception as exc:
                results.append(SendResult(f, False, f"failed: {type(exc).__name__}: {exc}"))
                continue
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == -1:
                results.append(SendResult(f, False, "failed: no response (connection lost or timed out)"))
            elif code == 0x0000 or code in (0xB000, 0xB007, 0xB006):  # success, or warning (stored with coercion)
                results.append(SendResult(f, True, f"0x{code:04X}"))
            else:
                results.append(SendResult(f, False, f"failed: status 0x{code:04X}"))
    finally:
        assoc.release()
    return results


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
