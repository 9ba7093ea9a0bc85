"""Decode one DICOM file with GDCM and write its raw samples to stdout: run as a child process, never imported.

GDCM aborts its process on some malformed files (uncaught C++ exceptions): run here, an abort costs only this
child. The script imports nothing but GDCM (it starts in a fraction of a second) and caps its own address space.

Usage: ``python -P gdcm_child.py FILE MAX_ADDRESS_SPACE``; FILE may be ``/proc/self/fd/N`` for a descriptor the
parent passed. Output: one JSON line (scalar type, dimensions), then the samples. Exit 2 with a message on stderr
when GDCM cannot read the file.
"""

import json
import os
import resource
import sys


def main() -> int:
    path, max_address_space = sys.argv[1], int(sys.argv[2])
    try:
        resource.setrlimit(resource.RLIMIT_AS, (max_address_space, max_address_space))
    except (ValueError, OSError):  # a lower hard limit is already set: keep it
        pass
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        sys.stderr.write("GDCM could not read the file\n")
        return 2
    img = reader.GetImage()
    buf = img.GetBuffer()
    if not buf:
        sys.stderr.write("GDCM returned no pixel buffer\n")
        return 2
    raw = buf.encode("utf-8", "surrogateescape") if isinstance(buf, str) else bytes(buf)
    head = {"scalar": img.GetPixelFormat().GetScalarTypeAsString(), "dims": [int(d) for d in img.GetDimensions()]}
    out = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)
    out.write(json.dumps(head).encode("ascii") + b"\n")
    out.write(raw)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
