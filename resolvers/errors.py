"""Source failures, classified so that the gateway can report them at the right paths."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["SourceError", "SourceFailure"]


class SourceFailure(StrEnum):
    UNAVAILABLE = "SOURCE_UNAVAILABLE"  # cannot connect
    TIMEOUT = "SOURCE_TIMEOUT"  # no answer within the source's timeout
    ERROR = "SOURCE_ERROR"  # answered, but with an error or with garbage
    ROW_LIMIT = "ROW_LIMIT_EXCEEDED"  # matched more rows than the gateway takes from one fetch


class SourceError(Exception):
    """A source could not answer. The message is safe to show: it never carries data values."""

    def __init__(self, source: str, failure: SourceFailure, message: str) -> None:
        super().__init__(message)
        self.source = source
        self.failure = failure
        self.message = message
