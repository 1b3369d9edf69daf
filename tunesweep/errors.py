"""The one exception type for user mistakes.

A UserError is printed as a single line (no traceback) and the process exits with code 2.
Anything else that escapes is a bug in tunesweep and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a config key, a data row, a missing file."""

    exit_code = 2
