"""Pseudonyms for de-identified reports: HMAC-SHA256 under a key that only the site knows.

A module of its own (the standard library only) so that a predict run can refuse ``--deidentify`` without a usable key
before any work, without importing pydicom for it (`cxrtriage.pipeline.config`).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cxrtriage.errors import ConfigError
from cxrtriage.files import text_bytes

ENV_PSEUDONYM_KEY = "CXRTRIAGE_PSEUDONYM_KEY"
MIN_KEY_LENGTH = 16
# The key versions up to 0.1 used when none was set; it is public, so it is refused.
_PUBLISHED_KEY = b"cxrtriage-pseudonym-v1"


def pseudonym_key() -> bytes:
    """The HMAC key for pseudonyms: ``$CXRTRIAGE_PSEUDONYM_KEY``, a secret of the site.

    There is no built-in key: a key anyone can read in the source turns every pseudonym back into the identity it
    hides (the IDs of a hospital are few enough to try them all), so de-identifying with it would only look safe.

    Raises:
        ConfigError: the variable is unset, shorter than ``MIN_KEY_LENGTH`` characters, or the old built-in key.
    """
    env = os.environ.get(ENV_PSEUDONYM_KEY, "")
    how = (f"set {ENV_PSEUDONYM_KEY} to a secret of your site, at least {MIN_KEY_LENGTH} characters, and keep it "
           f"(the same key gives the same pseudonyms), e.g. export {ENV_PSEUDONYM_KEY}=$(openssl rand -hex 32)")
    if not env:
        raise ConfigError(f"--deidentify needs a pseudonym key and {ENV_PSEUDONYM_KEY} is not set: {how}")
    if len(env) < MIN_KEY_LENGTH or text_bytes(env) == _PUBLISHED_KEY:
        raise ConfigError(f"--deidentify: {ENV_PSEUDONYM_KEY} is too short or a published key, so its pseudonyms could "
                          f"be reversed by trying every ID: {how}")
    return text_bytes(env)


def require_pseudonym_key() -> None:
    """Check that de-identification can run, before any work is done (``ConfigError`` as ``pseudonym_key``)."""
    pseudonym_key()


def pseudonym(value: str, *, prefix: str = "ANON-", key: bytes | None = None) -> str:
    """A stable pseudonym: HMAC-SHA256 of ``value`` (same input and key → same pseudonym)."""
    digest = hmac.new(key or pseudonym_key(), text_bytes(value), hashlib.sha256).hexdigest()
    return prefix + digest[:10].upper()


def pseudonym_uid(value: str, *, key: bytes | None = None) -> str:
    """A stable UID-shaped pseudonym (2.25.<decimal>) for a StudyInstanceUID."""
    digest = hmac.new(key or pseudonym_key(), b"uid:" + text_bytes(value),
                      hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))
