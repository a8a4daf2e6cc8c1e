"""One exception type for every user-facing problem.

The CLI turns a :class:`ScalenasError` into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""


class ScalenasError(Exception):
    """Bad input (flag, file, unit, space, checkpoint). The message names the problem and the field."""
