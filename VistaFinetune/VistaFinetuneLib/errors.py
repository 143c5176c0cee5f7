"""The one exception type the command line turns into a clear message and a non-zero exit."""


class UserError(Exception):
    """Bad input or an unmet precondition, described for the user (name the file and the problem)."""
