"""Errors shared by every package of the suite.

Each error names its culprit (a task, a model, a file and line, an endpoint), so a
user can act on the message alone. All derive from ``SuiteError`` so command-line
entry points can print them without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SuiteError(Exception):
    """Base class for errors a user can fix: bad input, missing data, bad config."""


class UnknownNameError(SuiteError, KeyError):
    """A task, model or optimizer name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"Unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return self.args[0]


class DataError(SuiteError):
    """Missing, unreadable or malformed benchmark data."""


class ChecksumError(SuiteError):
    """A file whose sha256 differs from the pinned one."""

    def __init__(self, path, expected: str, actual: str):
        super().__init__(
            f"Checksum mismatch for {path}: expected sha256 {expected}, got {actual}. "
            "The file is corrupt or not the pinned version; delete it and prepare it again."
        )


class ModelSourceError(SuiteError):
    """A model that cannot be found or loaded from any configured source."""


class EndpointError(SuiteError):
    """An OpenAI-compatible endpoint that is unreachable, errors or returns garbage."""
