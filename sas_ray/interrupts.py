"""Ctrl-C and SIGTERM as exceptions in the main thread, wherever it is.

With :func:`install`'s handlers, SIGINT raises ``KeyboardInterrupt`` (as Python's own handler
does) and SIGTERM :class:`Terminated` (a ``KeyboardInterrupt``), so both leave the same way:
stages stop, ``finally`` blocks run, and the Ray executor ends the processes it started
(:func:`sas_ray.executors.ray.session.stop_ray`, at exit).

One place must not raise: logging's module-lock functions, which also run as at-fork hooks
each time a subprocess starts (Ray starting its head does so a dozen times). An exception
there is "ignored" by the interpreter, so the interrupt is lost and logging's lock stays held
(the next log call of another thread then blocks forever). A signal landing there is sent
again 10 ms later.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number
_LOCK_FUNCTIONS = {getattr(logging, name).__code__ for name in ("_acquireLock", "_releaseLock")
                   if hasattr(logging, name)}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as Ctrl-C raises KeyboardInterrupt."""


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return EXIT_CODES[signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT]


def _raise(signum: int, frame: FrameType | None) -> None:
    if frame is not None and frame.f_code in _LOCK_FUNCTIONS:
        threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install() -> Callable[[], None]:
    """Install the handlers (from the main thread); returns what restores the previous ones."""
    previous = {s: signal.signal(s, _raise) for s in EXIT_CODES}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return restore
