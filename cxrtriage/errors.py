"""The few exception classes of cxrtriage, split by who must act to fix the problem, and the exit codes.

Every message says what went wrong, where (file, tag, field) and what to do about it.
Only the CLI catches these; it prints one line and exits with the class's exit code.

Exit codes of the command line (the README's "Exit status" and ``cxrtriage predict --help`` list them):

- 0 the run completed (inputs that failed are in the results with their reason);
- 1 only with ``--fail-on-error``: the run completed, and an input failed or a report could not be written;
- 2 input, 3 model, 4 configuration, 5 output: the run could not happen (the classes below);
- 70 an internal error: a bug in cxrtriage (``EX_SOFTWARE`` of sysexits.h); the traceback is saved to a file;
- 128 + the signal number when interrupted: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED_INPUTS = 1
EXIT_INTERNAL_ERROR = 70
EXIT_INTERRUPTED = 128  # plus the signal number


class CxrTriageError(Exception):
    """Base class of every error cxrtriage raises on purpose."""

    # Each subclass below sets its own code; a class that forgot to is a bug, never mistaken for --fail-on-error.
    exit_code = EXIT_INTERNAL_ERROR


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
