"""s100_llm.client.ChatClient as a behaviour uses it: a node of its own, spun by its own
executor, asking llm_node's chat action over DDS."""

from typing import Callable, Iterator, List, Tuple

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from s100_llm_msgs.action import Chat

from harness import WAIT
from harness import wait_for
from s100_llm.client import ChatClient
from s100_llm.client import ChatError

Behaviour = Tuple[Node, Callable[[Callable[[], bool]], None]]


@pytest.fixture
def behaviour(domain_id: int) -> Iterator[Behaviour]:
    """A behaviour's node and a spin_until(condition) that spins it (bounded by WAIT)."""
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = Node('behaviour', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin_until(condition: Callable[[], bool]) -> None:
        def spun() -> bool:
            executor.spin_once(timeout_sec=0.1)
            return condition()
        if not condition():
            wait_for(spun, 'the condition a ChatClient waits for', WAIT)

    yield node, spin_until
    executor.shutdown(timeout_sec=1.0)
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def test_ask_streams_the_feedback_and_returns_the_served_result(active, behaviour):
    active()
    node, spin_until = behaviour
    client = ChatClient(node)     # 'llm/chat', resolved in the behaviour's namespace: /llm/chat
    assert client.wait_for_server(WAIT)
    deltas: List[str] = []
    result = client.ask(Chat.Goal(prompt='hello robot'),
                        on_feedback=lambda feedback: deltas.append(feedback.delta),
                        spin_until=spin_until)
    assert result.error_code == Chat.Result.NONE and result.text == 'user: hello robot\n'
    # rclpy drops feedback that arrives after the result: what came is the text's beginning.
    assert deltas and result.text.startswith(''.join(deltas))


def test_ask_raises_chat_error_with_the_results_code_and_message(start_llm, behaviour):
    start_llm()     # unconfigured: every goal ends NOT_SERVING
    node, spin_until = behaviour
    client = ChatClient(node, '/llm/chat')
    assert client.wait_for_server(WAIT)
    with pytest.raises(ChatError) as raised:
        client.ask(Chat.Goal(prompt='hello'), spin_until=spin_until)
    error = raised.value
    assert error.error_code == Chat.Result.NOT_SERVING == error.result.error_code
    assert error.error_message and error.error_message == error.result.error_message
    assert error.error_message in str(error)


def test_cancel_when_cancels_the_goal_and_raises_canceled(active, behaviour):
    active(model='endless:latest', env={'OLLAMA_EMULATOR_TOKEN_RATE': '100'})
    node, spin_until = behaviour
    client = ChatClient(node)
    assert client.wait_for_server(WAIT)
    received: List[Chat.Feedback] = []
    with pytest.raises(ChatError) as raised:
        client.ask(Chat.Goal(prompt='go', max_tokens=8192), received.append, spin_until,
                   cancel_when=lambda: len(received) >= 5)
    assert raised.value.error_code == Chat.Result.CANCELED
    assert raised.value.result.text.startswith('tok0 tok1 tok2 tok3 tok4 ')
