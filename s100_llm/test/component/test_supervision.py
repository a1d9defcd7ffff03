"""Supervision: the policy (when a server is hung, the restart budget with its backoff) and
the Supervisor applying it to a real Serving."""

import dataclasses
import os
import signal
import threading
from typing import Any, List, Tuple

import psutil
import pytest

from s100_llm.core.config import ModelSettings
from s100_llm.core.config import ServerSettings
from s100_llm.core.config import SupervisionSettings
from s100_llm.core.serving import Serving
from s100_llm.core.serving import ServingState
from s100_llm.core.supervision import HEALTH_PERIOD
from s100_llm.core.supervision import HealthCheck
from s100_llm.core.supervision import HUNG_AFTER
from s100_llm.core.supervision import RestartBudget
from s100_llm.core.supervision import Supervisor
from support import free_port
from support import RecordedLog
from support import wait_for

EMULATOR = 's100-ollama-emulator'


def test_a_server_is_hung_only_after_silence_over_several_probes():
    health = HealthCheck(now=0.0, hung_after=6.0, period=2.0)
    assert not health.due(1.0) and health.due(2.0)
    assert not health.observe(False, 2.0)       # one failed probe is not a hang
    assert not health.observe(False, 4.0)       # silence shorter than hung_after
    assert health.observe(False, 6.0)           # 6 s without an answer, three probes


def test_one_slow_probe_after_a_long_pause_is_not_a_hang():
    health = HealthCheck(now=0.0, hung_after=6.0, period=2.0)
    assert not health.observe(False, 60.0)      # no probe ran for a minute: one miss only
    assert health.observe(False, 62.0)


def test_an_answer_resets_the_silence():
    health = HealthCheck(now=0.0, hung_after=6.0, period=2.0)
    health.observe(False, 2.0)
    health.observe(False, 4.0)
    assert not health.observe(True, 5.0)
    assert not health.observe(False, 7.0) and not health.observe(False, 9.0)
    assert health.observe(False, 11.0)


def test_restarts_back_off_double_and_run_out_within_the_window():
    settings = SupervisionSettings(max_restarts=3, restart_window=100.0, restart_backoff=1.0)
    budget = RestartBudget()
    decisions = [budget.decide(settings, now) for now in (0.0, 1.0, 2.0, 3.0)]
    assert [(d.restart, d.backoff, d.attempt) for d in decisions[:3]] == [
        (True, 1.0, 1), (True, 2.0, 2), (True, 4.0, 3)]
    assert not decisions[3].restart and '3 restart(s) within 100 s' in decisions[3].reason
    # Once the first restarts leave the window, restarts are allowed again.
    again = budget.decide(settings, 101.5)
    assert again.restart and again.attempt == 2 and again.backoff == 2.0


def test_no_restart_when_restarts_are_off():
    decision = RestartBudget().decide(SupervisionSettings(restart_on_failure=False), 0.0)
    assert not decision.restart and decision.reason == 'restart_on_failure is false'


def test_cleared_budget_starts_over():
    settings = SupervisionSettings(max_restarts=1)
    budget = RestartBudget()
    assert budget.decide(settings, 0.0).restart and not budget.decide(settings, 1.0).restart
    budget.clear()
    assert budget.decide(settings, 2.0).restart


# ---- Supervisor on a real Serving (emulator processes), with a clock the test moves -------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Supervised:
    serving: Serving
    supervisor: Supervisor
    log: RecordedLog
    clock: Clock
    policy: SupervisionSettings
    gave_up: List[Tuple[str, int]]
    aborted: List[Tuple[str, ServingState]]   # each abort_chats: its reason, what was served


@pytest.fixture
def supervised(tmp_path):
    made = []

    def make(**policy: Any) -> Supervised:
        log, clock = RecordedLog(), Clock()
        serving = Serving(log)
        gave_up: List[Tuple[str, int]] = []
        aborted: List[Tuple[str, ServingState]] = []
        settings = SupervisionSettings(**{'restart_backoff': 0.0, **policy})
        supervisor = Supervisor(serving, lambda: settings,
                                lambda reason: aborted.append((reason, serving.state)),
                                lambda cause, epoch: gave_up.append((cause, epoch)), log,
                                clock=clock)
        with serving.transition('configure'):
            serving.start(ServerSettings(host=f'127.0.0.1:{free_port()}', ollama_bin=EMULATOR,
                                         start_timeout=30, stop_timeout=2),
                          str(tmp_path / 'models'), ModelSettings(model='echo',
                                                                  memory_margin_mb=0))
        with serving.transition('activate', about_model=True):
            serving.activate()
        made.append(serving)
        return Supervised(serving, supervisor, log, clock, settings, gave_up, aborted)

    yield make
    for serving in made:
        serving.release()


def test_a_dead_server_is_restarted_and_its_model_reloaded(supervised):
    each = supervised()
    old_pid = each.serving.state.server.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: each.supervisor.check(), 'the exit to be seen')
    each.supervisor.step()
    state = each.serving.state
    assert state.server.pid != old_pid and state.server.restarts == 1
    assert state.model_loaded and state.runner_pids and not state.recovering
    assert state.server_error == ''
    ((reason, when_aborted),) = each.aborted
    assert f'the Ollama server (pid {old_pid}) exited' in reason
    # The chats end after the failure is published: goals arriving meanwhile are refused as
    # "recovering" instead of being sent to the dead server.
    assert not when_aborted.model_loaded and when_aborted.recovering.startswith(reason)
    assert 'recovered: server running and model loaded' in each.log.text()
    assert not each.gave_up


def test_beyond_the_restart_budget_supervision_gives_up_once(supervised):
    each = supervised(max_restarts=0)
    pid = each.serving.state.server.pid
    os.kill(pid, signal.SIGKILL)
    failure = wait_for(lambda: each.supervisor.check(), 'the exit to be seen')
    each.supervisor.restart(failure)
    ((cause, epoch),) = each.gave_up
    assert cause.startswith(f'the Ollama server (pid {pid}) exited') and epoch == failure.epoch
    assert each.serving.state.server_error == cause and not each.serving.state.model_loaded
    assert 'giving up (0 restart(s) within 300 s already made)' in each.log.text()


def test_a_lost_runner_is_reloaded_without_spending_the_budget(supervised):
    each = supervised(max_restarts=0)
    (runner,) = each.serving.state.runner_pids
    os.kill(runner, signal.SIGKILL)
    wait_for(lambda: each.supervisor.check(), 'the lost runner')
    each.supervisor.step()
    (reloaded,) = each.serving.state.runner_pids
    assert reloaded != runner and each.serving.state.model_loaded
    assert (each.serving.state.recovering, each.serving.state.model_error) == ('', '')
    ((reason, when_aborted),) = each.aborted
    assert not when_aborted.model_loaded
    assert when_aborted.recovering == f'{reason}; reloading the model'
    assert "recovered: model 'echo' reloaded" in each.log.text()
    assert not each.gave_up     # max_restarts 0: a restart would have been refused


def test_the_backoff_is_waited_without_the_lock_and_a_transition_makes_it_moot(supervised):
    each = supervised(restart_backoff=600.0)
    os.kill(each.serving.state.server.pid, signal.SIGKILL)
    failure = wait_for(lambda: each.supervisor.check(), 'the exit to be seen')
    restarting = threading.Thread(target=each.supervisor.restart, args=(failure,))
    restarting.start()
    wait_for(lambda: 'restarting in 600 s' in each.log.text(), 'the backoff to begin')
    assert each.serving.state.recovering.endswith('; restarting the server')
    with each.serving.transition('cleanup'):    # would wait 600 s if the backoff held the lock
        each.serving.stop()
    restarting.join()
    assert 'restart abandoned: a lifecycle transition ran meanwhile' in each.log.text()
    assert each.serving.state.server is None and not each.gave_up


def test_a_server_silent_beyond_hung_after_is_restarted(supervised):
    each = supervised()
    pid = each.serving.state.server.pid
    os.kill(pid, signal.SIGSTOP)    # alive, not answering HTTP
    failure = None
    while failure is None:          # one probe per health period of the test's clock
        failure = each.supervisor.check()
        each.clock.now += HEALTH_PERIOD
    assert failure.problem == (f'the Ollama server (pid {pid}) at '
                               f'{each.serving.state.server.base_url} has not answered for '
                               f'{HUNG_AFTER:.0f} s (hung)')
    each.supervisor.restart(failure)
    assert each.serving.state.server.pid != pid and each.serving.state.model_loaded
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
