"""What native decoders print on the C stderr becomes a note on the file it concerns, never a bare terminal line."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_cxr_dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

import cxrtriage.io.native as native
from cxrtriage.errors import InputError
from cxrtriage.io.dicom import read_dicom_detailed
from cxrtriage.io.native import MAX_MESSAGE_CHARS, MAX_MESSAGES, distinct_messages, held_native_output
from cxrtriage.io.openjpeg import decode_reduced, openjpeg_version
from cxrtriage.io.raster import read_raster_detailed
from cxrtriage.io.reduced import decode_j2k_reduced
from cxrtriage.io.sitk import itk_warnings, read_sitk

FOUR = lambda shape: 4.0  # noqa: E731  (a consumer that accepts 1/4)


def test_what_native_code_prints_is_held_and_handed_back(capfd: pytest.CaptureFixture[str]) -> None:
    with held_native_output() as held:
        os.write(2, b"Corrupt JPEG data: premature end of data segment\n")
        os.write(2, b"Corrupt JPEG data: premature end of data segment\nsecond line\n")
    assert held.messages() == ("Corrupt JPEG data: premature end of data segment", "second line")
    assert capfd.readouterr().err == ""
    os.write(2, b"after the block\n")  # the descriptor is restored
    assert capfd.readouterr().err == "after the block\n"
    with held_native_output() as quiet:  # the held file starts empty each time
        pass
    assert quiet.text == "" and quiet.messages() == ()


def test_an_inner_block_leaves_its_output_to_the_outer_one(capfd: pytest.CaptureFixture[str]) -> None:
    with held_native_output() as outer:
        with held_native_output() as inner:
            os.write(2, b"inner\n")
        os.write(2, b"outer\n")
    assert inner.messages() == () and outer.messages() == ("inner", "outer")
    assert capfd.readouterr().err == ""


def test_a_panic_is_logged_not_kept(caplog: pytest.LogCaptureFixture) -> None:
    class Panic(BaseException):  # what pyo3 raises for a Rust panic
        pass

    caplog.set_level(logging.DEBUG, logger="cxrtriage.io.native")
    with pytest.raises(Panic), held_native_output() as held:
        os.write(2, b"thread panicked at src/lib.rs\n")
        raise Panic
    assert held.text == ""  # the panic's message is already the file's reason: only logged
    assert "thread panicked" in caplog.text
    with held_native_output() as after:  # and the next block starts clean
        os.write(2, b"next\n")
    assert after.messages() == ("next",)


def test_a_forked_process_holds_its_output_in_its_own_file(monkeypatch: pytest.MonkeyPatch) -> None:
    with held_native_output():
        pass
    assert native._hold is not None
    pid, inherited = native._hold
    monkeypatch.setattr(native, "_hold", (pid + 1, inherited))  # as a child sees its parent's file
    with held_native_output() as held:
        os.write(2, b"child\n")
    assert held.messages() == ("child",) and native._hold[1] is not inherited
    assert inherited.seek(0, os.SEEK_END) == 0  # nothing went into the parent's file


def test_messages_are_distinct_trimmed_and_few() -> None:
    lines = ["  a   b ", "", "a b", "x" * 500, "c", "d", "e"]
    assert distinct_messages(lines) == ("a b", "x" * MAX_MESSAGE_CHARS, "c")[:MAX_MESSAGES]


def _damaged_jpeg() -> tuple[bytes, bytes]:
    """(intact, damaged) baseline JPEG of a textured 8-bit picture: the damaged one has part of its scan overwritten."""
    yy, xx = np.mgrid[0:320, 0:280].astype(np.float32)
    pixels = (127 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + np.random.default_rng(0).normal(0, 20, (320, 280)))
    ok, buf = cv2.imencode(".jpg", np.clip(pixels, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    intact = buf.tobytes()
    damaged = bytearray(intact)
    mid = len(damaged) // 2
    damaged[mid:mid + 400] = b"\xff" * 400
    return intact, bytes(damaged)


def _jpeg_dicom(path: Path, code: bytes) -> Path:
    ds = make_cxr_dataset(rows=320, cols=280, pixels=np.zeros((320, 280), np.uint8), bits_stored=8)
    ds.BitsAllocated, ds.HighBit = 8, 7
    ds.PixelData = encapsulate([code])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("reduced", [False, True], ids=["full", "reduced"])
def test_a_damaged_jpeg_says_so_in_its_notes(tmp_path: Path, capfd: pytest.CaptureFixture[str], reduced: bool) -> None:
    intact, damaged = _damaged_jpeg()
    scale = FOUR if reduced else None
    for name, code in (("intact", intact), ("damaged", damaged)):
        (tmp_path / f"{name}.jpg").write_bytes(code)
        _jpeg_dicom(tmp_path / f"{name}.dcm", code)
    readers = {"jpg": lambda p: read_raster_detailed(p, max_scale=scale),
               "dcm": lambda p: read_dicom_detailed(p, max_scale=scale)}
    for ext, read in readers.items():
        good, how = read(tmp_path / f"intact.{ext}")
        bad, _ = read(tmp_path / f"damaged.{ext}")
        assert (good.scale == 4) is reduced, how
        assert not [n for n in good.notes if "reported while decoding" in n]
        said = [n for n in bad.notes if "reported while decoding" in n]
        assert said and "Corrupt JPEG data" in said[0], (ext, bad.notes)
    assert capfd.readouterr().err == ""  # nothing reached the terminal without its file


@pytest.mark.skipif(openjpeg_version() is None, reason="the system libopenjp2 is not installed")
def test_openjpeg_warnings_are_collected_when_asked() -> None:
    from openjpeg.utils import encode_array

    pixels = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) % 4096).astype(np.uint16)
    code = bytes(encode_array(pixels, bits_stored=12, codec_format=0))
    no_eoc = code[:-2] + b"\x00\x00"  # the end-of-codestream marker overwritten: OpenJPEG warns and decodes on
    warnings: list[str] = []
    out = decode_reduced([no_eoc], 0, warnings)
    assert np.array_equal(out, pixels)
    assert warnings == ["Stream does not end with EOC"]
    quiet: list[str] = []
    assert decode_reduced([code], 0, quiet) is not None and quiet == []
    red = decode_j2k_reduced(no_eoc, rows=64, columns=48, max_scale=2.0)  # and the reduced path makes it a note
    assert red is not None and red.scale == 2
    assert red.notes == ("OpenJPEG reported while decoding: Stream does not end with EOC",)


def test_a_png_that_cannot_be_decoded_fails_with_libpngs_own_words(tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    ok, buf = cv2.imencode(".png", np.full((240, 240), 128, np.uint8))
    assert ok
    code = bytearray(buf.tobytes())
    code[29] ^= 0xFF  # a byte of the IHDR chunk's CRC
    path = tmp_path / "bad_crc.png"
    path.write_bytes(bytes(code))
    with pytest.raises(InputError,
                       match=r"could not decode this PNG file \(libpng error: IHDR: CRC error\): its content is corrupt"):
        read_raster_detailed(path)
    assert capfd.readouterr().err == ""


def test_itk_warnings_become_notes_that_do_not_name_the_file(tmp_path: Path,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    import struct

    import SimpleITK as sitk

    written = tmp_path / "written.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(300 * 280, dtype=np.int16).reshape(300, 280) % 1000),
                    str(written))
    header = bytearray(written.read_bytes())
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code 0, sform_code 1: the sform alone gives the geometry
    struct.pack_into("<12f", header, 280, 2.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0)  # x scaled 2, pixdim 1
    path = tmp_path / "Doe_John_scan.nii"
    path.write_bytes(bytes(header))
    image = read_sitk(path)
    said = [n for n in image.notes if n.startswith("SimpleITK reported")]
    assert said == ["SimpleITK reported while decoding: the file has unexpected scales in sform"]
    assert not [n for n in image.notes if "Doe" in n or "0x" in n]
    assert capfd.readouterr().err == ""


def test_itk_warning_text_is_cut_to_its_message() -> None:
    text = ("WARNING: In /tmp/SimpleITK-build/ITK/Modules/IO/NIFTI/src/itkNiftiImageIO.cxx, line 2008\n"
            "NiftiImageIO (0x5604f9041570): /data/in/Doe_John.nii has unexpected scales in sform\n\n")
    assert itk_warnings(text, ("/data/in/Doe_John.nii", "Doe_John.nii")) == ("the file has unexpected scales in sform",)


def test_a_progress_bars_redraw_during_a_block_goes_on_to_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    with held_native_output() as held:
        os.write(2, b"\r\x1b[2K  scoring 40%\n")  # what a progress bar's refresh thread may write meanwhile
        os.write(2, b"Corrupt JPEG data: premature end of data segment\n")
    assert held.messages() == ("Corrupt JPEG data: premature end of data segment",)
    assert capfd.readouterr().err == "\r\x1b[2K  scoring 40%\n"


def test_blocks_of_two_threads_at_once_make_no_notes_and_lose_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    import threading

    entered, b_done = threading.Event(), threading.Event()
    found: dict[str, tuple[str, ...]] = {}

    def first() -> None:
        with held_native_output() as held:
            entered.set()
            b_done.wait(5)
            os.write(2, b"from the first thread\n")
        found["first"] = held.messages()

    def second() -> None:
        entered.wait(5)
        with held_native_output() as held:
            os.write(2, b"from the second thread\n")
        found["second"] = held.messages()
        b_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert found == {"first": (), "second": ()}  # fd 2 is the process's: whose line is whose cannot be told
    err = capfd.readouterr().err
    assert "from the first thread\n" in err and "from the second thread\n" in err
    with held_native_output() as held:  # and the next block holds again
        os.write(2, b"alone\n")
    assert held.messages() == ("alone",)
