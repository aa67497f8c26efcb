"""The one exception type the CLI turns into a message and a non-zero exit (never a traceback)."""


class UsageError(Exception):
    """Bad input from the user: data, checkpoint or option. The message says what and how to fix it."""

    def __init__(self, message: str):
        # A DataLoader worker's exception reaches the main process re-created as type(e)(text), where
        # the text is "Caught UsageError in DataLoader worker ..." + the worker's whole traceback: keep
        # only the original message (its last line), so the CLI still prints no traceback.
        tag = f"{type(self).__module__}.{type(self).__qualname__}: "
        if isinstance(message, str) and message.startswith("Caught ") and "DataLoader worker" in message \
                and tag in message:
            message = message.rsplit(tag, 1)[1].strip()
        super().__init__(message)
