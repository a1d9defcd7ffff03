"""Issue 12: hostile and heavy input to the chat action: goal size limits, goal bursts, proxy
variables, server output without line ends, literal think tags, the TTS bridge under load."""

from action_msgs.msg import GoalStatus
import pytest

from harness import RosClient
from harness import wait_for
from harness import WAIT
from s100_llm.action import Chat


@pytest.fixture
def active(start_llm):
    def start(env=None, **parameters):
        llm = start_llm(env=env, **parameters)
        llm.activate()
        return llm
    return start


def test_a_burst_of_goals_from_five_clients_gets_an_answer_for_every_goal(active, domain_id):
    llm = active()
    clients = [llm.client] + [RosClient(domain_id) for _ in range(4)]
    try:
        for client in clients:
            assert client.chat_client.wait_for_server(timeout_sec=WAIT)
        futures = [client.chat_client.send_goal_async(Chat.Goal(prompt=f'goal {i}'))
                   for client in clients for i in range(100)]
        wait_for(lambda: all(f.done() for f in futures), f"an answer to every goal request ({sum(f.done() for f in futures)} of 500)",
                 timeout=120)
        handles = [f.result() for f in futures]
        accepted = [h for h in handles if h.accepted]
        assert accepted, 'the node took none of the burst'
        results = [h.get_result_async() for h in accepted]
        wait_for(lambda: all(r.done() for r in results), 'every accepted goal to end', 120)
        assert all(r.result().status == GoalStatus.STATUS_SUCCEEDED for r in results)
        assert llm.client.chat('after the burst').result.text == 'user: after the burst\n'
    finally:
        for client in clients[1:]:
            client.close()
