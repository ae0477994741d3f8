"""What a command shows on the terminal, and the log file that gets everything.

A command that computes (``Command.log_file`` in :mod:`sas_ray.cli`) writes a log file,
``<run.storage>/logs/<command>-<time>.log`` (local storage; under the system's temporary
directory for ``s3://`` storage), and says where once. The file gets every line: this
process's log records (at DEBUG with ``-v``, else INFO), everything Ray prints (its log
lines, worker output forwarded to the driver, the C++ core worker's lines on file
descriptors 1 and 2, which also reach Ray's own child processes), and what the terminal
shows.

The terminal (without ``-v``) shows this package's log records at INFO and above, other
libraries' warnings, the command's own output (tables, summaries), and training progress:
the per-epoch line of a training (``epoch 2/3  loss ...  img/s ...``), from this process
or from a Ray worker, is a status line rewritten in place on a terminal, and only its last
epoch is kept (the only one printed when the output is not a terminal). Records logged with
``extra={"transient": True}`` (a stage starting) are status lines too. Lines Ray prints -
``(Worker pid=...)`` output, ``... INFO file.py:N -- ...`` log lines, ``[... E pid tid]
core_worker.cc`` lines - go to the file only. ``-v`` shows every line live as well.

No Ray import: the routing is by line format (:func:`classify`).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from sas_ray.io import storage

ANSI = re.compile(r"\x1b\[[0-9;]*m")
WORKER = re.compile(r"^\((?P<who>.*?) pid=\d+(?:, ip=[\d.]+)?\) ?")  # "(Actor pid=1) "
RAY_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+[A-Z]+ \S+:\d+ -- ")
NATIVE_LOG = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z] \d+ \d+\]")
EPOCH = re.compile(r"^epoch (?P<epoch>\d+)/(?P<epochs>\d+) ")
TERMINAL_FORMAT = "%(asctime)s %(message)s"
FILE_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"


def classify(line: str) -> tuple[str, str]:
    """(route, text) of one printed line: route ``progress`` (a training's epoch line),
    ``file`` (something Ray printed) or ``terminal``; text without colour codes and without
    a Ray worker prefix."""
    text = ANSI.sub("", line)
    worker = WORKER.match(text)
    if worker:
        text = text[worker.end():]
    if EPOCH.match(text):
        return "progress", text
    if worker or RAY_LOG.match(text) or NATIVE_LOG.match(text):
        return "file", text
    return "terminal", text


class Router(io.TextIOBase):
    """A text stream that copies every line to ``log`` and routes it for ``target`` (see the
    module docstring); ``verbose`` passes every line through unchanged."""

    def __init__(self, target: IO[str], log: IO[str], verbose: bool) -> None:
        self.target, self.log, self.verbose = target, log, verbose
        self.tty = bool(getattr(target, "isatty", lambda: False)())
        self.pending = ""
        self.status = False  # a status line is on the terminal (tty only)

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.pending += s
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.line(line)
        return len(s)

    def flush(self) -> None:
        self.log.flush()
        self.target.flush()

    def line(self, line: str, transient: bool = False) -> None:
        """Route one complete line (without its newline)."""
        self.log.write(line + "\n")
        if self.verbose:
            self.target.write(line + "\n")
            return
        route, text = classify(line)
        if route == "file":
            return
        if route == "progress":
            m = EPOCH.match(text)
            self.show("  " + text.strip(), transient=m["epoch"] != m["epochs"])
            return
        self.show(line, transient=transient)

    def show(self, text: str, transient: bool) -> None:
        """Print ``text``; a transient line only on a terminal, until the next line."""
        if self.tty:
            clear = "\r\x1b[2K" if self.status else ""
            self.target.write(clear + text + ("" if transient else "\n"))
            self.status = transient
        elif not transient:
            self.target.write(text + "\n")
        self.target.flush()


class _RouterHandler(logging.Handler):
    """Log records -> a :class:`Router` (``transient`` records as status lines)."""

    def __init__(self, router: Router, level: int) -> None:
        super().__init__(level)
        self.router = router

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        for i, line in enumerate(text.split("\n")):
            self.router.line(line, transient=bool(getattr(record, "transient", False))
                             and i == 0)


class _ForTerminal(logging.Filter):
    """This package's records at INFO and above, anyone's warnings; not Ray's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("ray"):
            return False
        return record.name.startswith("sas_ray") or record.levelno >= logging.WARNING


def log_path(command: str, storage_root: str) -> str:
    """Where this run of ``command`` logs (see the module docstring)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = (os.path.join(tempfile.gettempdir(), "sas-ray-logs") if storage.is_s3(storage_root)
            else os.path.join(storage.absolute(storage_root), "logs"))
    return os.path.join(base, f"{command}-{stamp}-{os.getpid()}.log")


@contextmanager
def _native_output_to(log: IO[str]) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``log`` (C/C++ output and child processes) when they
    are this process's own stdout/stderr (not when a test harness captured them)."""
    try:
        own = sys.__stdout__.fileno() == 1 and sys.__stderr__.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        own = False
    if not own:
        yield
        return
    saved = [os.dup(1), os.dup(2)]
    sys.__stdout__.flush()
    sys.__stderr__.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _terminal_stream(stream: IO[str], fd: int) -> IO[str]:
    """A stream to the terminal that survives :func:`_native_output_to`: a duplicate of
    ``fd`` when ``stream`` writes to it, else ``stream`` itself."""
    try:
        if stream.fileno() == fd:
            return os.fdopen(os.dup(fd), "w", buffering=1, encoding=stream.encoding,
                             errors="replace")
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass
    return stream


@contextmanager
def console(command: str, storage_root: str, verbose: bool) -> Iterator[str]:
    """Route this command's output (see the module docstring) while the block runs; yields
    the log file's path, which is printed once."""
    path = log_path(command, storage_root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    saved = sys.stdout, sys.stderr
    env = {k: os.environ.get(k) for k in ENV}
    root = logging.getLogger()
    level = root.level
    # Ray's loggers ("ray", and "ray.data" once Ray Data ran) write through handlers of their
    # own and do not propagate; while the block runs their records go through ours instead
    # (to the log file; live with -v)
    ray_loggers = {logger: (list(logger.handlers), logger.propagate)
                   for name, logger in logging.root.manager.loggerDict.items()
                   if isinstance(logger, logging.Logger) and logger.handlers
                   and (name == "ray" or name.startswith("ray."))}
    with open(path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
        out = Router(_terminal_stream(sys.stdout, 1), log, verbose)
        err = Router(_terminal_stream(sys.stderr, 2), log, verbose)
        handlers = _handlers(out, log, verbose)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(logging.DEBUG if verbose else logging.INFO)  # DEBUG also makes Tune talk
        if not verbose:
            os.environ.update(ENV)
        sys.stdout, sys.stderr = out, err
        for logger in ray_loggers:
            logger.handlers, logger.propagate = [], True
        try:
            with _native_output_to(log):
                logging.getLogger(__name__).info("log: %s", path)
                yield path
        finally:
            for stream in (out, err):
                if stream.pending:
                    stream.line(stream.pending)
                stream.flush()
            sys.stdout, sys.stderr = saved
            for logger, (own, propagate) in ray_loggers.items():
                logger.handlers, logger.propagate = own, propagate
            for h in handlers:
                root.removeHandler(h)
            root.setLevel(level)
            for k, v in env.items():
                _restore(k, v)
            for stream in (out.target, err.target):
                if stream not in saved:
                    stream.close()


# Ray Data's progress bars off (they would only reach the log file)
ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def _restore(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _handlers(out: Router, log: IO[str], verbose: bool) -> list[logging.Handler]:
    terminal = _RouterHandler(out, logging.DEBUG if verbose else logging.INFO)
    terminal.setFormatter(logging.Formatter(TERMINAL_FORMAT, datefmt="%H:%M:%S"))
    terminal.addFilter(_ForTerminal())
    shown = _ForTerminal()

    def file_only(record: logging.LogRecord) -> bool:  # what the terminal handler drops
        if shown.filter(record) and record.levelno >= terminal.level:
            return False
        return record.name.startswith("sas_ray") or record.levelno >= logging.INFO

    everything = logging.StreamHandler(log)
    everything.setFormatter(logging.Formatter(FILE_FORMAT))
    everything.addFilter(file_only)
    return [terminal, everything]


def transient(**extra: Any) -> dict[str, Any]:
    """``extra=`` for a log record shown as a status line (:class:`Router`)."""
    return {"transient": True, **extra}
