"""The data package's error: raised with a message that says what is wrong with the data."""


class DataError(ValueError):
    """The data cannot be used; the message says why."""
