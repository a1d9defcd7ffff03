from s100_llm.core.admission import Admission


def test_reject_policy_refuses_when_all_slots_are_busy():
    admission = Admission('reject', slots=1, max_queued=5)
    assert admission.admit('first').start
    refused = admission.admit('second')
    assert not refused.start and 'busy' in refused.refusal
    assert admission.release('first') == []
    assert admission.admit('third').start


def test_queue_policy_starts_waiting_goals_in_arrival_order_as_slots_free():
    admission = Admission('queue', slots=2, max_queued=3)
    arrivals = [admission.admit(goal) for goal in 'abcde']
    assert [a.start for a in arrivals] == [True, True, False, False, False]
    assert not any(a.refusal for a in arrivals)
    full = admission.admit('f')
    assert 'queue full: 3 chat(s) already waiting (max_queued_goals 3)' == full.refusal
    assert (admission.running, admission.waiting) == (2, 3)
    assert admission.release('b') == ['c']
    assert admission.release('a') == ['d']
    assert admission.release('d') == ['e']
    assert admission.release('c') == [] and admission.release('e') == []
    assert (admission.running, admission.waiting) == (0, 0)


def test_preempt_policy_preempts_the_oldest_running_then_the_oldest_waiting():
    admission = Admission('preempt', slots=1, max_queued=0)
    assert admission.admit('a').start
    second = admission.admit('b')
    assert not second.start and second.preempted == 'a' and not second.preempted_was_waiting
    # 'a' is still running (it ends when its stream closes): 'b' waiting is the oldest left.
    third = admission.admit('c')
    assert third.preempted == 'b' and third.preempted_was_waiting
    assert (admission.running, admission.waiting) == (1, 1)
    assert admission.release('a') == ['c']


def test_a_withdrawn_goal_leaves_the_queue_and_never_starts():
    admission = Admission('queue', slots=1, max_queued=2)
    admission.admit('running')
    admission.admit('canceled')
    admission.admit('next')
    assert admission.withdraw('canceled') and not admission.withdraw('canceled')
    assert not admission.withdraw('running')
    assert admission.release('running') == ['next']


def test_withdraw_all_empties_the_queue():
    admission = Admission('queue', slots=1, max_queued=2)
    for goal in ('running', 'w1', 'w2'):
        admission.admit(goal)
    assert admission.withdraw_all() == ['w1', 'w2']
    assert (admission.running, admission.waiting) == (1, 0)
    assert admission.release('running') == []
