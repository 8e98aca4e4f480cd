"""The one exception type a person can cause; its message says what to do."""


class MopeError(Exception):
    """Bad input or an unusable environment (missing file, no network, impossible budget)."""
