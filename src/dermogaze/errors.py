"""Errors that the command line reports as one clear line (no traceback)."""


class DermogazeError(Exception):
    """A problem with the user's input: a file, a folder, a checkpoint or an option."""


class DataError(DermogazeError):
    """Bad or missing data. The message names the file and what is wrong with it."""
