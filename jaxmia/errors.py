"""The one exception a user is meant to read.

Every check of user input (flags, data files, checkpoints) raises :class:`UserError` with a single
line that names the problem and what to do. The CLI scripts print that line and exit non-zero.
"""


class UserError(ValueError):
    """Bad input from the user: a one-line message naming the problem and the fix."""

    def __init__(self, message: str):
        if "\n" in message:
            raise AssertionError("UserError messages must be one line")
        super().__init__(message)
