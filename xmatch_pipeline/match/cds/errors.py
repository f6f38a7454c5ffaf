"""The ways a CDS XMatch call fails, told apart so that only what can succeed is retried."""

from __future__ import annotations

from xmatch_pipeline.match.crossmatch_engine import CrossmatchError


class CdsXmatchError(CrossmatchError):
    """A CDS XMatch request failed; the message names the URL, the chunk and what to do."""


class CdsRejectedError(CdsXmatchError):
    """CDS refused the request (HTTP 400, QUERY_STATUS=ERROR): retrying cannot help."""

    def __init__(self, message: str, service_message: str) -> None:
        super().__init__(message)
        self.service_message = service_message


class CdsBannedError(CdsXmatchError):
    """CDS answered 403: this address is banned, and every further request prolongs it."""


class CdsUnavailableError(CdsXmatchError):
    """Every attempt within the retry budget failed with a transient error."""


class CdsResponseError(CdsXmatchError):
    """The answer is not a crossmatch CDS could have sent (wrong rows or columns)."""


class RetryableResponseError(Exception):
    """A response body that a new attempt may fix (error page, truncated CSV, busy)."""
