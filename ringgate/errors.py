"""One small exception tree. A full ring is a return code on the hot path, not an exception."""


class RinggateError(Exception):
    """Base of every error ringgate raises on purpose."""


class ConfigurationError(RinggateError):
    """A setting is invalid; the message names the variable, the value and the rule."""


class SinkError(RinggateError):
    """A sink could not take a batch."""


class RetryableSinkError(SinkError):
    """Anything but the records' own content: retried with backoff while the ring holds the batch."""


class PermanentSinkError(SinkError):
    """The sink refuses the content of the batch (e.g. SQLSTATE 22/23): split and dead-letter."""
