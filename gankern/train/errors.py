"""The one exception type the CLI turns into a message and a non-zero exit (never a traceback)."""


class UsageError(Exception):
    """Bad input from the user: data, checkpoint or option. The message says what and how to fix it."""
