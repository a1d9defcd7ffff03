"""The supervision policy: when a server is hung, and the restart budget with its backoff."""

from s100_llm.core.config import SupervisionSettings
from s100_llm.core.supervision import HealthCheck
from s100_llm.core.supervision import RestartBudget


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
