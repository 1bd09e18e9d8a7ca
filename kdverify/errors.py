"""One exception type for every user-facing failure, so the CLI can print one line and exit non-zero."""


def first_line(exc: BaseException) -> str:
    """One short line of a third-party exception (exporters, quantisers and torch raise pages)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class KdverifyError(Exception):
    """A problem the user can fix (bad path, missing data, wrong checkpoint): shown as one line, no traceback."""


class DataError(KdverifyError):
    """Dataset files are missing, unreadable or fail their checksum."""


class DataMissing(DataError):
    """The dataset is not there at all: claims may skip, unless the user asked for data."""


class DataCorrupt(DataError):
    """The dataset is there but truncated, modified or undecodable: always an error, never a skip."""


class CheckpointError(KdverifyError):
    """A checkpoint cannot be read, is not a kdverify checkpoint, or does not match its architecture."""
