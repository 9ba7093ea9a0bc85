"""The system libopenjp2 through ctypes: decode a JPEG 2000 codestream held in memory, at a reduced resolution.

Why not glymur (used until 2026-12): it reads only from paths, so every image's codestream was joined from its
DICOM fragments, written to a memory file and read back by OpenJPEG: three copies of a 4 MB stream and ~4 ms of
the ~40 ms a reduced decode of the RG1 chest costs (`benchmarks/bench_decode.py`). Here OpenJPEG reads the fragments
where they lie, through a stream whose read callback copies from them; the decoded samples are identical
(tests/io/test_io_openjpeg.py compares them with a full decode).

Only what the reduced path needs is bound: one bare codestream (J2K), all tiles, ``cp_reduce`` resolution levels
discarded, one component returned. OpenJPEG 2.3+ (Debian/Ubuntu: ``libopenjp2-7``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int, c_int32, c_int64, c_size_t, c_uint16, c_uint32, c_uint64, c_void_p

import numpy as np

Buffer = bytes | bytearray | memoryview

_CODEC_J2K = 0  # OPJ_CODEC_J2K: a bare codestream, as DICOM carries it
_STREAM_CHUNK = 1 << 20  # OpenJPEG's own default stream buffer
_PARAMETERS_BYTES = 1 << 14  # opj_dparameters_t is 8252 bytes on 64-bit Linux (two 4096-byte paths): room to spare
_END_OF_STREAM = c_size_t(-1).value


class OpenJpegError(RuntimeError):
    """libopenjp2 is missing, or it could not decode this codestream."""


class _ImageComp(ctypes.Structure):  # opj_image_comp_t
    _fields_ = [("dx", c_uint32), ("dy", c_uint32), ("w", c_uint32), ("h", c_uint32), ("x0", c_uint32),
                ("y0", c_uint32), ("prec", c_uint32), ("bpp", c_uint32), ("sgnd", c_uint32),
                ("resno_decoded", c_uint32), ("factor", c_uint32), ("data", POINTER(c_int32)), ("alpha", c_uint16)]


class _Image(ctypes.Structure):  # opj_image_t
    _fields_ = [("x0", c_uint32), ("y0", c_uint32), ("x1", c_uint32), ("y1", c_uint32), ("numcomps", c_uint32),
                ("color_space", c_int), ("comps", POINTER(_ImageComp)), ("icc_profile_buf", c_void_p),
                ("icc_profile_len", c_uint32)]


_READ = CFUNCTYPE(c_size_t, c_void_p, c_size_t, c_void_p)
_SKIP = CFUNCTYPE(c_int64, c_int64, c_void_p)
_SEEK = CFUNCTYPE(c_int32, c_int64, c_void_p)
_MESSAGE = CFUNCTYPE(None, c_char_p, c_void_p)
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "opj_version": (c_char_p, []),
    "opj_stream_create": (c_void_p, [c_size_t, c_int32]),
    "opj_stream_set_read_function": (None, [c_void_p, _READ]),
    "opj_stream_set_skip_function": (None, [c_void_p, _SKIP]),
    "opj_stream_set_seek_function": (None, [c_void_p, _SEEK]),
    "opj_stream_set_user_data_length": (None, [c_void_p, c_uint64]),
    "opj_stream_destroy": (None, [c_void_p]),
    "opj_create_decompress": (c_void_p, [c_int]),
    "opj_destroy_codec": (None, [c_void_p]),
    "opj_set_default_decoder_parameters": (None, [c_void_p]),
    "opj_setup_decoder": (c_int32, [c_void_p, c_void_p]),
    "opj_codec_set_threads": (c_int32, [c_void_p, c_int]),
    "opj_set_error_handler": (c_int32, [c_void_p, _MESSAGE, c_void_p]),
    "opj_set_warning_handler": (c_int32, [c_void_p, _MESSAGE, c_void_p]),
    "opj_read_header": (c_int32, [c_void_p, c_void_p, POINTER(POINTER(_Image))]),
    "opj_decode": (c_int32, [c_void_p, c_void_p, POINTER(_Image)]),
    "opj_end_decompress": (c_int32, [c_void_p, c_void_p]),
    "opj_image_destroy": (None, [POINTER(_Image)]),
}


@functools.cache
def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("openjp2")
    try:
        lib = ctypes.CDLL(name or "libopenjp2.so.7")
        for fn, (restype, argtypes) in _SIGNATURES.items():
            f = getattr(lib, fn)
            f.restype, f.argtypes = restype, argtypes
    except (OSError, AttributeError):  # not installed, or older than 2.3 (opj_codec_set_threads)
        return None
    return lib


def openjpeg_version() -> str | None:
    """libopenjp2's version ('2.5.0'), or None when the library cannot be loaded."""
    lib = _library()
    if lib is None:
        return None
    version: bytes = lib.opj_version()
    return version.decode("ascii", "replace")


class _Fragments:
    """The codestream as OpenJPEG's stream reads it: a position over the fragments, copied from where they lie."""

    def __init__(self, parts: Sequence[Buffer]) -> None:
        self.arrays = [np.frombuffer(p, dtype=np.uint8) for p in parts if len(p)]
        self.starts = np.cumsum([0] + [a.size for a in self.arrays])
        self.total = int(self.starts[-1])
        self.pos = 0
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def read(self, buffer: int, n: int, _user: object) -> int:
        if self.pos >= self.total:
            return _END_OF_STREAM
        done, i = 0, int(np.searchsorted(self.starts, self.pos, side="right")) - 1
        while done < n and i < len(self.arrays):
            off = self.pos + done - int(self.starts[i])
            k = min(n - done, self.arrays[i].size - off)
            ctypes.memmove(buffer + done, self.arrays[i].ctypes.data + off, k)
            done += k
            i += 1
        self.pos += done
        return done

    def skip(self, n: int, _user: object) -> int:
        new = min(max(self.pos + n, 0), self.total)
        moved, self.pos = new - self.pos, new
        return moved

    def seek(self, to: int, _user: object) -> int:
        if not 0 <= to <= self.total:
            return 0
        self.pos = to
        return 1

    def error(self, message: bytes | None, _user: object) -> None:
        if message and len(self.errors) < 5:
            self.errors.append(message.decode("utf-8", "replace").strip())

    def warning(self, message: bytes | None, _user: object) -> None:
        if message and len(self.warnings) < 5:
            self.warnings.append(message.decode("utf-8", "replace").strip())


def decode_reduced(parts: Sequence[Buffer], reduce: int, warnings: list[str] | None = None) -> np.ndarray:
    """The first component of the bare JPEG 2000 codestream ``parts`` (its fragments, in order) with ``reduce``
    resolution levels discarded (1/2**reduce per side), as uint8/uint16 (int8/int16 when signed).

    ``warnings``, when given, receives OpenJPEG's warnings (e.g. a truncated tile part it decoded around).

    Raises:
        OpenJpegError: libopenjp2 unavailable, or OpenJPEG's error (its own message) for this codestream.
    """
    lib = _library()
    if lib is None:
        raise OpenJpegError("the system libopenjp2 (Debian/Ubuntu: libopenjp2-7) cannot be loaded")
    source = _Fragments(parts)
    # the callbacks must outlive every OpenJPEG call below: kept in locals until the end of this function
    read, skip, seek, error = _READ(source.read), _SKIP(source.skip), _SEEK(source.seek), _MESSAGE(source.error)
    warn = _MESSAGE(source.warning)
    stream = lib.opj_stream_create(_STREAM_CHUNK, 1)
    codec = lib.opj_create_decompress(_CODEC_J2K)
    image = POINTER(_Image)()
    try:
        if not stream or not codec:
            raise OpenJpegError("OpenJPEG could not allocate a decoder")
        lib.opj_stream_set_read_function(stream, read)
        lib.opj_stream_set_skip_function(stream, skip)
        lib.opj_stream_set_seek_function(stream, seek)
        lib.opj_stream_set_user_data_length(stream, source.total)
        lib.opj_set_error_handler(codec, error, None)
        if warnings is not None:
            lib.opj_set_warning_handler(codec, warn, None)
        params = ctypes.create_string_buffer(_PARAMETERS_BYTES)
        lib.opj_set_default_decoder_parameters(params)
        c_uint32.from_buffer(params, 0).value = reduce  # cp_reduce, the struct's first member
        # 0 threads: OpenJPEG decodes in the calling thread (a decode process is one core; a pool costs ~2 ms)
        ok = (lib.opj_setup_decoder(codec, params) and lib.opj_codec_set_threads(codec, 0)
              and lib.opj_read_header(stream, codec, ctypes.byref(image))
              and lib.opj_decode(codec, stream, image) and lib.opj_end_decompress(codec, stream))
        if not ok or not image or image.contents.numcomps < 1:
            raise OpenJpegError("; ".join(source.errors) or "OpenJPEG could not decode the codestream")
        comp = image.contents.comps[0]
        if not comp.data or comp.w == 0 or comp.h == 0:
            raise OpenJpegError("OpenJPEG returned no samples")
        samples = np.ctypeslib.as_array(comp.data, shape=(comp.h, comp.w))
        if comp.sgnd:
            kind: type[np.integer] = np.int8 if comp.prec <= 8 else np.int16
        else:
            kind = np.uint8 if comp.prec <= 8 else np.uint16
        return samples.astype(kind)  # a copy: the samples die with the image below
    finally:
        if image:
            lib.opj_image_destroy(image)
        if codec:
            lib.opj_destroy_codec(codec)
        if stream:
            lib.opj_stream_destroy(stream)
        if warnings is not None:
            warnings.extend(source.warnings)
        del read, skip, seek, error, warn
