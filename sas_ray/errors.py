"""User-facing errors: one line that names the problem and the fix."""


class SasRayError(Exception):
    """An error caused by input or environment; the CLI prints it as one line and exits 2."""
