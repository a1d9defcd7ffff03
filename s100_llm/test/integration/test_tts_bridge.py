"""The tts_bridge node (its own executable) in front of llm_node: prompts on prompt_text become
chat goals, the answers come out on tts_text sentence by sentence; its names follow the
namespace and remapping."""

import pathlib
import re
from typing import Callable, Iterator, List

from action_msgs.msg import GoalStatusArray
import pytest
from rclpy.qos import QoSProfile
from std_msgs.msg import String

from conftest import default_parameters
from harness import NodeProcess
from harness import RosClient
from harness import wait_for

NAMESPACE = ['-r', '__ns:=/robot1']


@pytest.fixture
def start_bridge(domain_id: int, tmp_path: pathlib.Path
                 ) -> Iterator[Callable[..., NodeProcess]]:
    """start_bridge(*ros_arguments): the installed tts_bridge executable in the test's domain."""
    started: List[NodeProcess] = []

    def start(*ros_arguments: str) -> NodeProcess:
        bridge = NodeProcess(domain_id, tmp_path / f'bridge{len(started)}.log', {},
                             name='tts_bridge', executable='tts_bridge',
                             ros_arguments=ros_arguments)
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        assert bridge.stop() == 0, bridge.output()


def publish_until_taken(publisher, text: str, taken: Callable[[], bool]) -> None:
    """DDS may drop a message sent while the bridge's reader is still matching the writer:
    resend until the bridge has taken the prompt."""
    wait_for(lambda: publisher.get_subscription_count() > 0, 'the bridge to subscribe')
    for _ in range(10):
        publisher.publish(String(data=text))
        try:
            wait_for(taken, 'the bridge to take the prompt', timeout=5)
            return
        except AssertionError:
            continue
    raise AssertionError(f'the bridge never took {text!r}')


def test_tts_bridge_speaks_sentence_by_sentence(active, start_bridge):
    llm = active()
    start_bridge()
    spoken, goals = [], []
    node = llm.client.node
    node.create_subscription(String, '/tts_text', lambda m: spoken.append(m.data), 10)
    node.create_subscription(GoalStatusArray, '/llm/chat/_action/status',
                             lambda m: goals.extend(m.status_list), 10)
    publisher = node.create_publisher(String, '/prompt_text', 10)
    publish_until_taken(publisher, 'Hello there. How are you? Fine', lambda: goals)
    wait_for(lambda: len(spoken) >= 3, 'three sentences on /tts_text')
    assert spoken[:3] == ['user: Hello there.', 'How are you?', 'Fine']


def test_tts_bridge_answers_a_burst_of_prompts_in_order_or_names_each_one_dropped(
        active, start_bridge):
    llm = active()
    bridge = start_bridge()
    spoken = []
    node = llm.client.node
    node.create_subscription(String, '/tts_text', lambda m: spoken.append(m.data), 1000)
    publisher = node.create_publisher(String, '/prompt_text', QoSProfile(depth=1000))
    publish_until_taken(publisher, 'Warm up.', lambda: 'user: Warm up.' in spoken)
    for i in range(100):
        publisher.publish(String(data=f'Prompt {i}.'))

    def dropped():
        return {int(n) for n in re.findall(r"dropped prompt 'Prompt (\d+)\.'", bridge.output())}

    def answered():
        return [int(n) for n in re.findall(r'user: Prompt (\d+)\.', ' '.join(spoken))]

    wait_for(lambda: set(answered()) | dropped() == set(range(100)),
             'every prompt to be spoken or named as dropped', timeout=120)
    assert answered() == sorted(set(answered()))           # in order, each once
    assert not set(answered()) & dropped()
    assert len(answered()) >= 65                            # one answered + 64 waiting at least


def test_tts_bridge_drops_a_prompt_when_no_chat_action_answers_and_says_so(start_bridge,
                                                                           domain_id):
    bridge = start_bridge()
    client = RosClient(domain_id)
    try:
        publisher = client.node.create_publisher(String, '/prompt_text', 10)
        publish_until_taken(publisher, 'Anyone there?', lambda: "dropped prompt 'Anyone there?'"
                            in bridge.output())
    finally:
        client.close()
    assert 'the chat action is not available' in bridge.output()


def test_with_a_namespace_the_bridge_uses_the_topics_and_action_under_it(
        start_bridge, domain_id, tmp_path, ollama_port, models_dir):
    """What `ros2 launch s100_llm llm.launch.py namespace:=robot1 tts_bridge:=true` starts."""
    llm = NodeProcess(domain_id, tmp_path / 'node.log',
                      default_parameters(ollama_port, models_dir), ros_arguments=NAMESPACE)
    client = RosClient(domain_id, 'robot1/llm')
    try:
        client.wait_for_node()
        assert client.change_state('configure') and client.change_state('activate')
        bridge = start_bridge(*NAMESPACE)
        spoken = []
        client.node.create_subscription(String, '/robot1/tts_text',
                                        lambda m: spoken.append(m.data), 10)
        publisher = client.node.create_publisher(String, '/robot1/prompt_text', 10)
        publish_until_taken(publisher, 'Hello robot. Bye', lambda: len(spoken) >= 2)
        assert spoken[:2] == ['user: Hello robot.', 'Bye']
        graph = client.node
        subscribed = {name for name, _ in graph.get_subscriber_names_and_types_by_node(
            'tts_bridge', '/robot1')}
        published = {name for name, _ in graph.get_publisher_names_and_types_by_node(
            'tts_bridge', '/robot1')}
        assert '/robot1/prompt_text' in subscribed and '/prompt_text' not in subscribed
        assert '/robot1/tts_text' in published and '/tts_text' not in published
        assert '/robot1/prompt_text -> /robot1/llm/chat -> /robot1/tts_text' in bridge.output()
    finally:
        client.close()
        assert llm.stop() == 0, llm.output()


def test_the_bridge_topics_and_action_can_be_remapped(start_bridge, domain_id):
    bridge = start_bridge('-r', 'prompt_text:=/speech/asr_text', '-r', 'tts_text:=speak',
                          '-p', 'action:=/robot2/llm/chat')
    wait_for(lambda: '/speech/asr_text -> /robot2/llm/chat -> /speak' in bridge.output(),
             'the bridge to log its names')
