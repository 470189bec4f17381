"""The one error type of data_prep: the CLI prints its message (no traceback) and exits 2."""


class DataPrepError(Exception):
    """Bad input or option; the message names the file or option and how to fix it."""
