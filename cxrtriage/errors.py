"""The few exception classes of cxrtriage, split by who must act to fix the problem.

Every message says what went wrong, where (file, tag, field) and what to do about it.
Only the CLI catches these; it prints one line and exits with the class's exit code.
"""

from __future__ import annotations


class CxrTriageError(Exception):
    """Base class of every error cxrtriage raises on purpose."""

    exit_code = 1


class InputError(CxrTriageError):
    """An input file or folder cannot be used: fix or exclude the input."""

    exit_code = 2


class ModelError(CxrTriageError):
    """A model file or its manifest is missing, invalid or tampered with: fix the model."""

    exit_code = 3


class ConfigError(CxrTriageError):
    """A command-line option, policy file or site file is invalid: fix the configuration."""

    exit_code = 4


class OutputError(CxrTriageError):
    """An output cannot be written: check the output folder and its permissions."""

    exit_code = 5
