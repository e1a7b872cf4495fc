"""The base class of every error that is the user's to fix (input, config, files, devices).

The command line prints such an error as one line, ``simclrv2 STAGE: error: MESSAGE``, and exits
with code 2; any other exception is a bug of ours and keeps its traceback.
"""


class UserError(ValueError):
    """Something the user can fix; the message says what, where, and what to do."""


class OutputError(UserError):
    """An output path cannot be written (a directory where a file is wanted, a file in the way)."""


class NonFiniteError(UserError):
    """Training diverged: a loss, weight or statistic became NaN or infinite. Nothing non-finite is
    ever saved, so the last good checkpoint is kept."""
