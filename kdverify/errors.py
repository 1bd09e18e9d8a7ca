"""One exception type for every user-facing failure, so the CLI can print one line and exit non-zero."""


class KdverifyError(Exception):
    """A problem the user can fix (bad path, missing data, wrong checkpoint): shown as one line, no traceback."""


class DataError(KdverifyError):
    """Dataset files are missing, truncated or fail their checksum."""


class CheckpointError(KdverifyError):
    """A checkpoint cannot be read, is not a kdverify checkpoint, or does not match its architecture."""
