#!/usr/bin/env bash
# Set up everything the test suite needs: the package with its dev + train + ray extras, and the real
# validators and clients the tests run (dciodvfy from dicom3tools, DCMTK's storescu/echoscu as DICOM senders,
# headless Chromium, pdftoppm from poppler-utils, DejaVu fonts for Unicode text in PDF reports, libopenjp2 for
# reduced-resolution JPEG 2000 decoding).
set -euo pipefail
cd "$(dirname "$0")/.."
# -c: the exact versions the suite last passed with (a fresh machine would otherwise take the newest releases
# the ranges in pyproject.toml allow, and CI could turn red without a change here)
python3 -m pip install -q -e '.[dev,train,ray]' -c scripts/constraints.txt
# torchxrayvision's source for the `models import --xrv` tests, without its torchvision (whose PyPI wheel does not load
# with the CPU torch; the import path never imports it)
python3 -m pip install -q --no-deps torchxrayvision -c scripts/constraints.txt
missing=()
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
# pynetdicom installs scripts named storescu/echoscu too: DCMTK's are the ones whose --version names dcmtk
# (their output is collected first: with pipefail, grep -q closing the pipe early made the check fail at random)
versions=$(for t in $(type -ap storescu); do "$t" --version 2>/dev/null || true; done)
grep -qi dcmtk <<<"$versions" || missing+=(dcmtk)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
# JPEG 2000 at reduced resolution goes through the system OpenJPEG (without it: full decoding only)
ldconfig -p 2>/dev/null | grep -q libopenjp2 || missing+=(libopenjp2-7)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: ${missing[*]} not installed (need root + apt-get); the tests that use them will skip" >&2
  fi
fi
