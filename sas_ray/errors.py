"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import errno
import os
import shutil


class SasRayError(Exception):
    """An error caused by input or environment; the CLI prints it as one line and exits 2."""


def _free_bytes(path: str) -> str:
    """Free space on the file system holding ``path`` (its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    free = float(shutil.disk_usage(probe).free)
    for unit in ("B", "KiB", "MiB"):
        if free < 1024:
            return f"{free:.0f} {unit}"
        free /= 1024
    return f"{free:.1f} GiB"


def _os_error(err: OSError, output: str | None) -> str:
    paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    if err.errno == errno.ENOSPC:
        path = str(err.filename) if err.filename is not None else output
        where = f" writing {path} ({_free_bytes(path)} free there)" if path else ""
        return (f"no space left on device{where}; free space or point the output "
                "(run.storage, --out) at a larger disk")
    reason = err.strerror or str(err) or type(err).__name__
    return f"{reason}: {paths}" if paths else reason


def describe(err: BaseException, output: str | None = None) -> str:
    """One line for any exception reaching the CLI.

    A :class:`SasRayError` is its message; an ``OSError`` its reason and path (``ENOSPC``
    with the free space there; ``output``, the command's output location, stands in for the
    path when the error names none, as pyarrow's do); anything else (an unexpected error) its
    type and the first line of its message. An exception that wraps another as ``cause``
    (Ray's task errors) is described by the wrapped one."""
    while isinstance(getattr(err, "cause", None), BaseException):
        err = err.cause  # type: ignore[attr-defined]
    if isinstance(err, SasRayError):
        return " ".join(str(err).split())
    if isinstance(err, OSError):
        return _os_error(err, output)
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
    return f"{text} (run with -v for the traceback)"
