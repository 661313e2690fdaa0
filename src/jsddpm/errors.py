"""The one exception a user can cause. The CLI prints its message as a single line and exits 2."""


class UserError(Exception):
    """Bad input, bad config or a missing file: the message names the file and the fix."""
