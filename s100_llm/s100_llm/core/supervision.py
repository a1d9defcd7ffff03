"""Supervision: notice a dead or hung server or a lost model, restart, reload or give up.

HealthCheck (when a server counts as hung) and RestartBudget (how many restarts, after which
backoff) are the policy as plain objects: fed with what was observed and the time, they never
sleep, spawn or log. Supervisor is the loop that applies them to a Serving on a thread of its
own: every SUPERVISION_PERIOD it looks at the server's process and the model's runners (a
waitpid and a /proc read, under the Serving lock only when it is free: a transition in
progress owns the server), probes HTTP every HEALTH_PERIOD (without the lock: a hung server
takes the whole timeout), and then
- reloads a model when its runner went away while active (no restart counted); the embedding
  model's runner going away ends no chat (unless its reload fails: then the server restarts);
- restarts the server when it exited or hung and the budget allows, after the backoff waited
  WITHOUT the lock (a transition requested meanwhile runs, and makes the restart moot);
- gives up otherwise: it calls `enter_error_processing(cause, epoch)` once, and the node takes
  the lifecycle to ErrorProcessing.
"""

import collections
import dataclasses
import threading
import time
from typing import Callable, Deque, Optional

from .config import SupervisionSettings
from .engine import EngineError
from .server import LogSink
from .server import ServerError
from .serving import Failure
from .serving import Serving
from .serving import ServingError

# A server that has not answered GET / for this long while its process is alive is hung (a
# SIGSTOPped or deadlocked `ollama serve`). Ollama answers GET / from its HTTP goroutines even
# while it loads a model or generates, so silence this long is not load.
HUNG_AFTER = 6.0
# How often the server is asked (and how long one answer may take).
HEALTH_PERIOD = 2.0
# The server's and runner's liveness is checked this often (a poll and a /proc read each).
SUPERVISION_PERIOD = 0.5


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


class Supervisor:
    """Watches a Serving from a thread of its own and recovers it, or gives up."""

    def __init__(self, serving: Serving, settings: Callable[[], SupervisionSettings],
                 abort_chats: Callable[[str], None],
                 enter_error_processing: Callable[[str, int], None], log: LogSink,
                 clock: Callable[[], float] = time.monotonic,
                 period: float = SUPERVISION_PERIOD) -> None:
        """settings: the restart policy as it is now (read at each failure: it applies at
        once); abort_chats(cause): end the running chats; enter_error_processing(cause,
        epoch): the node goes to ErrorProcessing unless a transition ran since `epoch`."""
        self.serving = serving
        self.settings = settings
        self.abort_chats = abort_chats
        self.enter_error_processing = enter_error_processing
        self.log = log
        self.clock = clock
        self.period = period
        self.budget = RestartBudget()
        self._health: Optional[HealthCheck] = None
        self._health_epoch = -1
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name='supervision', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the loop (a backoff in progress ends too: Serving.exit_now sets its interrupt)."""
        self._stopped.set()
        self.serving.interrupt.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.period):
            try:
                self.step()
            except Exception as error:  # keep supervising; say what went wrong
                if self._stopped.is_set():
                    return
                self.log('error', f'supervision raised {type(error).__name__}: {error}')

    def step(self) -> None:
        """One look at the server, and what follows from it."""
        failure = self.check()
        if failure is not None and failure.model_only:
            failure = self.reload(failure)
        if failure is not None:
            self.restart(failure)

    def check(self) -> Optional[Failure]:
        """What went wrong since the last check; None when all is well or a transition runs."""
        seen = self.serving.check()
        if seen is None:
            self._health = None
            return None
        if seen.failure is not None:
            return seen.failure
        if self._health is None or self._health_epoch != seen.epoch:
            # No probes ran during a transition or a restart: the silence starts now.
            self._health, self._health_epoch = HealthCheck(self.clock()), seen.epoch
            return None
        health = self._health
        if not health.due(self.clock()):
            return None
        # A busy machine may be slow to answer; only silence over hung_after counts.
        answered, server = self.serving.probe(timeout=health.period)
        if not health.observe(answered, self.clock()):
            return None
        silent = self.clock() - health.last_answer
        return Failure(f'{server} has not answered for {silent:.0f} s (hung)', seen.epoch)

    def reload(self, failure: Failure) -> Optional[Failure]:
        """The model went away while active (unloaded by keep_alive or by any client of the
        server, or its runner crashed): load it again. Not a server failure, so the restart
        budget is not spent; a reload that fails is one (returned, for restart())."""
        with self.serving.lock:
            if not self.serving.still_current(failure) or not self.serving.wants_model():
                return None     # a transition ran meanwhile and decided what happens
            self.log('warn', f'{failure.problem} while active (the model was unloaded or its '
                             'runner crashed): reloading it (not a server failure, no restart '
                             'counted)')
            # Recovering before the chats end: goals arriving meanwhile are told so.
            self.serving.mark_reloading(failure)
            if not failure.embedding:   # the chat model's runner went, and its chats with it
                self.abort_chats(failure.problem)
            try:
                self.serving.reload(failure)
            except (ServingError, EngineError, ServerError) as error:
                return Failure(f'{failure.problem}; reloading it failed: {error}', failure.epoch)
        self.log('info', f"recovered: model '{failure.model or self.serving.state.model}' "
                         'reloaded')
        return None

    def restart(self, failure: Failure) -> None:
        """Restart the server per the restart policy (reloading the model when active), or
        give up: enter_error_processing. The backoff is waited without the lock."""
        problem = failure.problem
        while True:
            with self.serving.lock:
                if not self.serving.still_current(failure):
                    return
                self.log('error', problem)
                policy = self.settings()
                decision = self.budget.decide(policy, self.clock())
                # The failure is published before the chats end: goals arriving meanwhile are
                # told the node is recovering (or not serving), not sent to a dead server.
                self.serving.fail(problem, recovering=f'{problem}; restarting the server'
                                  if decision.restart else '')
                self.abort_chats(problem)
                if not decision.restart:
                    self.log('error', f'giving up ({decision.reason}): going to ErrorProcessing')
                    break
                self.log('warn', f'restarting in {decision.backoff:g} s (restart '
                                 f'{decision.attempt}/{policy.max_restarts})')
                self.serving.interrupt.clear()
            self.serving.interrupt.wait(decision.backoff)
            with self.serving.lock:
                if self.serving.exiting.is_set() or self._stopped.is_set():
                    return
                if self.serving.epoch != failure.epoch:
                    self.log('info', 'restart abandoned: a lifecycle transition ran meanwhile')
                    return
                try:
                    self.serving.restart()
                except (ServingError, EngineError, ServerError) as error:
                    self.log('error', f'restart failed: {error}')
                    problem = f'{failure.problem}; restart failed: {error}'
                    continue
                self._health = None
                self.log('info', 'recovered: server running' + (
                    ' and model loaded' if self.serving.state.model_loaded else ''))
                return
        self.enter_error_processing(problem, failure.epoch)
