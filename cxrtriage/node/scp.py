"""The DICOM side of ``cxrtriage serve``: a Storage SCP (pynetdicom) for chest radiographs, and C-ECHO.

Accepted for storage: CR, DX (for presentation and for processing) and Secondary Capture (single-frame, and
multi-frame greyscale byte/word), in every transfer syntax the decoders read. Any other storage SOP class is
negotiated, so that a sender mixing it into an association can go on with its other instances, but each such
instance is refused with status 0122H (SOP class not supported). An instance is answered "success" only once it is
on disk (``cxrtriage.node.spool``); a full disk gets A700H (out of resources) instead.

Log lines name associations by calling AE title and address, instances by SOP Instance UID, studies by Study
Instance UID, with counts: never a patient name or ID (pynetdicom's own logging, which can dump data sets, is kept at
WARNING).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxrtriage.errors import ConfigError

log = logging.getLogger(__name__)

ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}

SUCCESS = 0x0000
REFUSED_SOP_CLASS = 0x0122  # Refused: SOP class not supported (PS3.7 C.4.2.1.4)
OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (PS3.4 B.2.3)
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True, slots=True)
class ScpSettings:
    """The network side of a node: who we are, where we listen, whom we accept, how much at once."""

    aet: str = "CXRTRIAGE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_aets: tuple[str, ...] = ()  # calling AE titles accepted; empty = any
    max_associations: int = 10
    max_pdu: int = 0  # bytes; 0 = no limit
    network_timeout: float = 60.0  # an idle association is closed after this many seconds

    def __post_init__(self) -> None:
        for name, aet in (("--aet", self.aet), *(("--allow-aet", a) for a in self.allowed_aets)):
            check_aet(name, aet)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: a TCP port is 0-65535 (0: any free port)")
        if not 1 <= self.max_associations <= 1000:
            raise ConfigError(f"--max-associations {self.max_associations}: must be within 1..1000")
        if self.max_pdu and not 4096 <= self.max_pdu <= 2**32 - 1:
            raise ConfigError(f"--max-pdu {self.max_pdu}: must be 0 (no limit) or within 4096..4294967295 bytes")


def check_aet(option: str, aet: str) -> None:
    """An AE title is 1-16 ASCII characters, no backslash or control character, no leading or trailing space."""
    if (not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet or aet.strip() != aet
            or any(ord(c) < 32 for c in aet)):
        raise ConfigError(f"{option} '{aet}': an AE title is 1-16 ASCII characters without backslash, control "
                          "characters or edge spaces")


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One instance as it came over the network: the encoded data set with its file meta, ready to be written."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    data: bytes
    calling_aet: str


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver made of an instance: the C-STORE status to answer, and whether it was a duplicate."""

    status: int
    duplicate: bool = False


Receiver = Callable[[ReceivedInstance], Answer]


def shown(uid: str) -> str:
    """A UID (or AE title) from the network as a log line shows it: printable ASCII only, at most 80 characters, so
    that what a sender puts in its data can never forge a log line."""
    text = "".join(c if " " <= c <= "~" else "?" for c in uid)
    return text if len(text) <= 80 else text[:77] + "..."


def sop_class_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else f"SOP class {uid}"


def study_uid_of(data: bytes) -> str:
    """The StudyInstanceUID of an encoded data set ('' when it has none or cannot be parsed)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:  # the pipeline reports an unreadable file as failed, with its reason
        return ""


def study_uid_of_file(path: str | Path) -> str:
    """The StudyInstanceUID of a DICOM file ('' when it has none or cannot be read)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:  # the pipeline reports an unreadable file as failed, with its reason
        return ""


@dataclass
class _Tally:
    aet: str
    address: str
    stored: int = 0
    duplicates: int = 0
    refused: int = 0


@dataclass
class _Associations:
    """Per association: what it stored and refused (for its closing log line)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_id: dict[int, _Tally] = field(default_factory=dict)

    def tally(self, event: Any) -> _Tally:
        assoc = event.assoc
        with self.lock:
            t = self.by_id.get(id(assoc))
            if t is None:
                requestor = assoc.requestor
                t = self.by_id[id(assoc)] = _Tally(shown(str(requestor.ae_title).strip()),
                                                   f"{requestor.address}:{requestor.port}")
            return t

    def close(self, event: Any, how: str) -> None:
        with self.lock:
            t = self.by_id.pop(id(event.assoc), None)
        if t is not None:
            log.info("association from '%s' (%s) %s: %d instance(s) stored, %d duplicate(s), %d refused", t.aet,
                     t.address, how, t.stored, t.duplicates, t.refused)


class ScpServer:
    """A running Storage SCP; ``port`` is the one it listens on (useful with port 0), ``stop`` ends it."""

    def __init__(self, ae: AE, server: Any) -> None:
        self._ae = ae
        self._server = server
        self.host, self.port = server.server_address[:2]

    def stop(self) -> None:
        """Stop listening and abort the associations still open (their unacknowledged instances are the senders')."""
        self._ae.shutdown()


def start_scp(settings: ScpSettings, receive: Receiver) -> ScpServer:
    """Start listening (in background threads) and return the server.

    Raises:
        ConfigError: the address cannot be bound (port in use, no permission for a port below 1024).
    """
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO/DEBUG lines can hold patient data
    ae = AE(ae_title=settings.aet)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.network_timeout
    ae.network_timeout = settings.network_timeout
    if settings.allowed_aets:
        ae.require_calling_aet = list(settings.allowed_aets)
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    associations = _Associations()
    handlers: list[Any] = [
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_C_STORE, _store_handler(receive, associations)),
        (evt.EVT_ACCEPTED, lambda e: log.info("association from '%s' (%s) accepted", associations.tally(e).aet,
                                              associations.tally(e).address)),
        (evt.EVT_REJECTED, _on_rejected),
        (evt.EVT_RELEASED, lambda e: associations.close(e, "released")),
        (evt.EVT_ABORTED, lambda e: associations.close(e, "aborted")),
    ]
    try:
        server = ae.start_server((settings.host, settings.port), block=False, evt_handlers=handlers)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port} ({exc.strerror or exc}); is another "
                          "program using the port? Choose another --port") from exc
    return ScpServer(ae, server)


def _on_echo(event: Any) -> int:
    log.debug("C-ECHO from '%s'", shown(str(event.assoc.requestor.ae_title).strip()))
    return SUCCESS


def _on_rejected(event: Any) -> None:
    requestor = event.assoc.requestor
    log.warning("association from '%s' (%s) rejected (calling AE title not allowed, or too many associations)",
                shown(str(requestor.ae_title).strip()), requestor.address)


def _store_handler(receive: Receiver, associations: _Associations) -> Callable[[Any], int]:
    def handle(event: Any) -> int:
        tally = associations.tally(event)
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        if sop_class not in ACCEPTED_SOP_CLASSES:
            tally.refused += 1
            log.warning("instance %s refused (0x%04X): %s is not accepted, only chest radiographs (CR, DX, secondary "
                        "capture)", shown(sop_uid), REFUSED_SOP_CLASS, shown(sop_class_name(sop_class)))
            return REFUSED_SOP_CLASS
        try:
            data = event.encoded_dataset(include_meta=True)
            answer = receive(ReceivedInstance(sop_class, sop_uid, study_uid_of(data), data, tally.aet))
        except Exception as exc:  # never let one instance take the node down; the sender keeps it and may resend
            log.error("instance %s: internal error while storing (%s); answered 0x%04X", shown(sop_uid), type(exc).__name__,
                      PROCESSING_FAILURE)
            answer = Answer(PROCESSING_FAILURE)
        if answer.status != SUCCESS:
            tally.refused += 1
        elif answer.duplicate:
            tally.duplicates += 1
        else:
            tally.stored += 1
        return answer.status

    return handle
