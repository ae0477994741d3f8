"""Sweep trials one after another in this process (the local executor's ``run_trials``).

Resuming needs nothing here: the trial function returns a trial's stored result without
training (see :mod:`sas_ray.stages.sweep`), and an interrupted training resumes from its last
checkpoint in the trial's run directory.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from sas_ray.executors.base import TrialFn, TrialOutcome, last_line

log = logging.getLogger(__name__)


def run_one(fn: TrialFn, params: dict[str, Any], max_failures: int) -> TrialOutcome:
    """``fn(params)``, retried up to ``max_failures`` times after an exception."""
    for attempt in range(max_failures + 1):
        try:
            return TrialOutcome(params, metrics=fn(params))
        except Exception:  # a failed trial is reported and the sweep goes on
            error = last_line(traceback.format_exc())
            if attempt < max_failures:
                log.warning("trial %s failed (%s); retrying", params["name"], error)
    log.error("trial %s FAILED after %d attempt(s): %s", params["name"], max_failures + 1, error)
    return TrialOutcome(params, error=error)


def run_trials(fn: TrialFn, trials: Sequence[dict[str, Any]], max_failures: int,
               callbacks: Sequence[Callable[[TrialOutcome], None]] = ()) -> list[TrialOutcome]:
    """Every trial in order; ``callbacks`` see each outcome as soon as it is known."""
    outcomes = []
    for i, params in enumerate(trials):
        log.info("trial %d/%d: %s", i + 1, len(trials), params["name"])
        outcome = run_one(fn, params, max_failures)
        for callback in callbacks:
            callback(outcome)
        outcomes.append(outcome)
    return outcomes
