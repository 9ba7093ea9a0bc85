"""What native decoders print on the C stderr while they decode (libjpeg's "Corrupt JPEG data: premature end of data
segment"), held back and handed to the caller, so that it becomes a note on the file it concerns.

Why: libjpeg and the codecs behind pydicom report damaged data by printing to file descriptor 2 and decoding on
(the missing part comes out grey or repeated). Left alone, the line reached the terminal without the file's name, in
a decode worker between two redraws of the progress bar, and the file's row said nothing. A Rust decoder that panics
prints its message before it becomes an exception; that text is already in the file's reason, so it is only logged.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

log = logging.getLogger(__name__)

MAX_HELD_BYTES = 1 << 16  # a decoder that prints more than this about one image is cut short
MAX_MESSAGES = 3  # distinct lines kept per image: the first ones say what is wrong, the rest repeat it
MAX_MESSAGE_CHARS = 200


@dataclass
class HeldOutput:
    """What native code printed on the C stderr inside a `held_native_output` block; ``text`` is set when the block
    ends (empty when nothing was printed, or when the output could not be held)."""

    text: str = ""

    def messages(self) -> tuple[str, ...]:
        """What was printed, as `distinct_messages`."""
        return distinct_messages(self.text.splitlines())


def distinct_messages(lines: Iterable[str]) -> tuple[str, ...]:
    """The distinct non-empty lines, in order, at most `MAX_MESSAGES`, each at most `MAX_MESSAGE_CHARS`."""
    seen: dict[str, None] = {}
    for line in lines:
        text = " ".join(line.split())[:MAX_MESSAGE_CHARS]
        if text:
            seen.setdefault(text, None)
    return tuple(seen)[:MAX_MESSAGES]


_REPORTED = " reported while decoding: "

DAMAGE_MESSAGES = re.compile(r"Corrupt JPEG data|Premature end of JPEG file", re.IGNORECASE)
"""Decoder messages that say pixel data were lost: libjpeg's (and libjpeg-turbo's) warnings for a damaged entropy-coded
segment ("Corrupt JPEG data: premature end of data segment", "...: bad Huffman code", "...: found marker 0xd9 instead
of RST3", "...: 267 extraneous bytes before marker 0xd9") and for a stream that ends early. libjpeg then decodes on and
the rows after the damage come out grey or shifted: measured on the RG1 chest with 2000 bytes zeroed in the middle of
its stream (baseline: the lower half grey; lossless: the lower half's mean 22452 instead of 16409). Other decoders'
messages are left out: libpng's warnings here are about harmless metadata (an sRGB profile it knows to be incorrect),
OpenJPEG's missing-EOC warning comes with a complete image, and OpenJPEG said nothing at all about zeroed or flipped
bytes inside a codestream."""


def decoder_notes(messages: tuple[str, ...], decoder: str) -> list[str]:
    """One note per message, saying which decoder printed it.

    The message is quoted as it is: libjpeg's "Corrupt JPEG data: ..." says itself that the data are damaged, while
    libpng also warns about harmless things (an sRGB profile it knows to be incorrect) that a note must not call
    damage (`damage_notes` tells them apart)."""
    return [f"{decoder}{_REPORTED}{m}" for m in messages]


def damage_notes(notes: Iterable[str]) -> tuple[str, ...]:
    """The notes of `decoder_notes` whose message says that pixel data were lost (`DAMAGE_MESSAGES`)."""
    return tuple(n for n in notes if _REPORTED in n and DAMAGE_MESSAGES.search(n.split(_REPORTED, 1)[1]))


_hold: tuple[int, IO[bytes]] | None = None  # (pid, file): one file per process (a forked child opens its own)


@dataclass
class _Capture:
    """The block that holds fd 2 now: its thread, and whether another thread decoded meanwhile."""

    thread: int
    shared: bool = False


_active: _Capture | None = None
_lock = threading.Lock()


def _hold_file() -> IO[bytes]:
    global _hold
    if _hold is None or _hold[0] != os.getpid():
        _hold = (os.getpid(), tempfile.TemporaryFile())
    return _hold[1]


@contextmanager
def held_native_output() -> Iterator[HeldOutput]:
    """Redirect file descriptor 2 to a file while the block runs; the returned `HeldOutput` holds what was printed.

    The caller makes notes of it. A block inside another one of the same thread leaves everything to the outer
    block. fd 2 belongs to the whole process, so blocks of two threads at once cannot tell whose output is whose:
    then neither makes notes, and what was held goes on to stderr, as if nothing had been held. Other output meanwhile
    is held too: a line with terminal control characters (a progress bar's redraw, in a process that reads images for
    a report while it shows one) is no decoder's and goes on to stderr after the block.
    """
    global _active
    out = HeldOutput()
    me = threading.get_ident()
    with _lock:
        if _active is not None:
            _active.shared = _active.shared or _active.thread != me
            owner = None
        else:
            owner = _start()
            if owner is not None:
                _active = _Capture(me)
    if owner is None:  # nested, another thread's block, or fd 2 cannot be held: decode as is
        yield out
        return
    tmp, saved = owner
    panicked = False
    try:
        yield out
    except BaseException as exc:
        panicked = not isinstance(exc, Exception | KeyboardInterrupt | SystemExit)
        raise
    finally:
        with _lock:
            shared = _active is not None and _active.shared
            _active = None
            os.dup2(saved, 2)
            os.close(saved)
        text = _take(tmp)
        text, terminal = _split_terminal_output(text)
        if shared:
            text, terminal = "", terminal + text
        if terminal:
            view = memoryview(terminal.encode("utf-8", "replace"))
            while view:
                view = view[os.write(2, view):]
        if panicked:
            log.debug("decoder output before it panicked: %s", text[:2000])
        else:
            out.text = text


def _start() -> tuple[IO[bytes], int] | None:
    """fd 2 pointed at this process's hold file: (the file, a copy of the old fd 2), or None when it cannot be."""
    try:
        sys.stderr.flush()
        tmp = _hold_file()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr to redirect, or nowhere to hold it
        return None
    try:
        os.dup2(tmp.fileno(), 2)
    except OSError:
        os.close(saved)
        return None
    return tmp, saved


def _take(tmp: IO[bytes]) -> str:
    """What the hold file holds (at most `MAX_HELD_BYTES`), leaving it empty."""
    if not tmp.seek(0, os.SEEK_END):
        return ""
    tmp.seek(0)
    text = tmp.read(MAX_HELD_BYTES).decode("utf-8", "replace")
    tmp.seek(0)
    tmp.truncate()
    return text


def _split_terminal_output(text: str) -> tuple[str, str]:
    """(the plain lines, the lines with terminal control characters: escape sequences, carriage returns)."""
    plain: list[str] = []
    terminal: list[str] = []
    for line in _LINES.findall(text):  # lines end at newlines only: a redraw starts with a carriage return
        (terminal if _CONTROL.search(line.rstrip("\r\n")) else plain).append(line)
    return "".join(plain), "".join(terminal)


_LINES = re.compile(r"[^\n]*\n|[^\n]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # every control character but tab and newline
