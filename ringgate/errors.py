"""One small exception tree. A full ring is a return code on the hot path, not an exception."""


class RinggateError(Exception):
    """Base of every error ringgate raises on purpose."""


class ConfigurationError(RinggateError):
    """A setting is invalid; the message names the variable, the value and the rule."""


class UntrustedFileError(RinggateError):
    """A file in /dev/shm another local user could have made or may open: never adopted (exit 1)."""


class SinkError(RinggateError):
    """A sink could not take a batch.

    The message, for the logs, says everything (hosts, paths, keys; never a password); `reason`
    is the failure class alone ("connection refused"), for /readyz, which anyone who can reach
    the port may read.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or "delivery failed"


class RetryableSinkError(SinkError):
    """Anything but the records' own content: retried with backoff while the ring holds the batch."""


class PermanentSinkError(SinkError):
    """The sink refuses the content of the batch (e.g. SQLSTATE 22/23): split and dead-letter."""


class Refusal(RinggateError):
    """A request that stored nothing: `status` is the HTTP status, `code` the error code of DESIGN
    §4/§9, `detail` says what and where, `retry_after` (seconds) when trying again can succeed.
    Every step of the shared path raises it; each source shapes it into its protocol's answer."""

    def __init__(self, status: int, code: str, detail: str, retry_after: int | None = None):
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    def __reduce__(self):
        return type(self), (self.status, self.code, self.detail, self.retry_after)
