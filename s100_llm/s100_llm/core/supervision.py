"""Supervision policy as plain objects: when a server counts as hung, and the restart budget.

The node's supervision thread feeds these with what it observed (a process exit, an HTTP
answer or its absence, the time) and acts on what they decide; they never sleep, spawn or log.
"""

import collections
import dataclasses
from typing import Deque

from .config import SupervisionSettings

# A server that has not answered GET / for this long while its process is alive is hung (a
# SIGSTOPped or deadlocked `ollama serve`). Ollama answers GET / from its HTTP goroutines even
# while it loads a model or generates, so silence this long is not load.
HUNG_AFTER = 6.0
# How often the server is asked (and how long one answer may take).
HEALTH_PERIOD = 2.0


class HealthCheck:
    """Whether a running server still answers HTTP, from the probes' outcomes over time."""

    def __init__(self, now: float, hung_after: float = HUNG_AFTER,
                 period: float = HEALTH_PERIOD) -> None:
        self.hung_after = hung_after
        self.period = period
        self.last_answer = now
        self.last_probe = now
        self.failed_probes = 0

    def due(self, now: float) -> bool:
        """Whether it is time for the next probe."""
        return now - self.last_probe >= self.period

    def observe(self, answered: bool, now: float) -> bool:
        """Record one probe's outcome; True when the server is to be treated as hung: no answer
        for hung_after seconds over at least two failed probes (one slow answer is not enough).
        """
        self.last_probe = now
        if answered:
            self.last_answer = now
            self.failed_probes = 0
            return False
        self.failed_probes += 1
        return self.failed_probes >= 2 and now - self.last_answer >= self.hung_after


@dataclasses.dataclass(frozen=True)
class RestartDecision:
    """What to do about one server failure: restart after `backoff` s, or give up."""

    restart: bool
    backoff: float = 0.0
    attempt: int = 0          # 1 for the first restart within the window
    reason: str = ''          # why not, when restart is False


class RestartBudget:
    """At most max_restarts server restarts within restart_window, each waiting restart_backoff
    doubled for every restart already made in the window."""

    def __init__(self) -> None:
        self._restarts: Deque[float] = collections.deque()

    def clear(self) -> None:
        self._restarts.clear()

    def decide(self, settings: SupervisionSettings, now: float) -> RestartDecision:
        """Spend one restart when the policy allows it (the caller then restarts)."""
        while self._restarts and now - self._restarts[0] > settings.restart_window:
            self._restarts.popleft()
        if not settings.restart_on_failure:
            return RestartDecision(False, reason='restart_on_failure is false')
        if len(self._restarts) >= settings.max_restarts:
            return RestartDecision(False, reason=f'{settings.max_restarts} restart(s) within '
                                                 f'{settings.restart_window:g} s already made')
        backoff = settings.restart_backoff * 2 ** len(self._restarts)
        self._restarts.append(now)
        return RestartDecision(True, backoff=backoff, attempt=len(self._restarts))
