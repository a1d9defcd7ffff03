import threading

from s100_llm.core.admission import Admission


def test_reject_policy_rejects_when_all_slots_are_busy():
    admission = Admission('reject', slots=1, max_queued=5)
    first, _ = admission.request()
    second, reason = admission.request()
    assert first is not None and second is None
    assert 'busy' in reason
    admission.release(first)
    assert admission.request()[0] is not None


def test_queue_policy_serves_in_arrival_order_up_to_its_length():
    admission = Admission('queue', slots=1, max_queued=2)
    tickets = [admission.request()[0] for _ in range(3)]
    rejected, reason = admission.request()
    assert None not in tickets and rejected is None and 'queue full' in reason
    order = []

    def run(ticket):
        assert admission.wait_turn(ticket, lambda: False)
        order.append(ticket.number)
        admission.release(ticket)

    threads = [threading.Thread(target=run, args=(t,)) for t in reversed(tickets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert order == [t.number for t in tickets]


def test_preempt_policy_cancels_the_oldest():
    admission = Admission('preempt', slots=1, max_queued=0)
    preempted = threading.Event()
    first, _ = admission.request()
    assert admission.wait_turn(first, lambda: False)
    first.on_preempt = preempted.set
    second, _ = admission.request()
    assert second is not None and first.preempted and preempted.is_set()
    admission.release(first)
    assert admission.wait_turn(second, lambda: False)


def test_abandoned_waiting_goal_leaves_the_queue():
    admission = Admission('queue', slots=1, max_queued=1)
    running, _ = admission.request()
    assert admission.wait_turn(running, lambda: False)
    waiting, _ = admission.request()
    assert admission.wait_turn(waiting, lambda: True) is False
    assert admission.waiting == 0 and admission.running == 1
