"""Issue 26: answers typed by a ROS message type (the goal's format names it), over DDS."""

from typing import Any

from action_msgs.msg import GoalStatus
from geometry_msgs.msg import PoseStamped
from integration.test_client import behaviour  # noqa: F401 (a fixture: a behaviour node)
import pytest
from s100_llm_msgs.action import Chat

from harness import assert_aborted
from harness import WAIT
from s100_llm.client import ChatClient
from s100_llm.client import ChatError
from s100_llm.client import typed_answer

POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'


def test_a_scripted_model_fills_pose_stamped(active):
    llm = active()
    run = llm.client.chat('Where is the dock? frame_id=map x=1.5 y=-2 w=1 sec=12',
                          format=POSE_STAMPED)
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert run.result.format_type == POSE_STAMPED
    pose = typed_answer(run.result, PoseStamped)
    assert pose.header.frame_id == 'map' and pose.header.stamp.sec == 12
    assert (pose.pose.position.x, pose.pose.position.y) == (1.5, -2.0)
    assert pose.pose.orientation.w == 1.0


def test_the_short_type_name_is_accepted_and_named_in_full(active):
    llm = active()
    run = llm.client.chat('frame_id=odom', format='geometry_msgs/PoseStamped')
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert run.result.format_type == POSE_STAMPED


def test_an_answer_that_does_not_fill_the_type_ends_format_mismatch(active):
    # The scripted model keeps to no numeric bound: a negative nanosec breaks uint32.
    llm = active()
    run = llm.client.send_chat(Chat.Goal(prompt='nanosec=-3', format=POSE_STAMPED))
    result = assert_aborted(run, Chat.Result.FORMAT_MISMATCH, '-3 is less than the minimum')
    assert result.format_type == POSE_STAMPED
    assert '"nanosec": -3' in result.text    # the raw answer
    with pytest.raises(ChatError) as raised:
        typed_answer(result, PoseStamped)
    assert raised.value.error_code == Chat.Result.FORMAT_MISMATCH


@pytest.mark.parametrize('fmt, reason', [
    ('nope_msgs/msg/Where', 'format: nope_msgs/msg/Where is not installed'),
    ('geometry_msgs/msg/Nowhere', 'format: geometry_msgs/msg/Nowhere is not installed'),
    ('sensor_msgs/msg/Image', 'format: sensor_msgs/msg/Image: field data is binary data'),
    ('s100_llm_demo_interfaces/srv/Look',
     'format: s100_llm_demo_interfaces/srv/Look is a service type, not a message type'),
])
def test_an_unusable_type_ends_invalid_goal_naming_it(active, fmt, reason):
    llm = active()
    run = llm.client.send_chat(Chat.Goal(prompt='where?', format=fmt))
    result = assert_aborted(run, Chat.Result.INVALID_GOAL, reason)
    assert result.format_type == ''
    assert reason in llm.client.wait_log('chat goal rejected')


def test_ask_typed_returns_the_message(active, behaviour):  # noqa: F811 (the fixture)
    active()
    node, spin_until = behaviour
    client = ChatClient(node)
    assert client.wait_for_server(WAIT)
    pose: Any = client.ask_typed(Chat.Goal(prompt='Go. frame_id=kitchen x=3'), PoseStamped,
                                 spin_until=spin_until)
    assert isinstance(pose, PoseStamped)
    assert (pose.header.frame_id, pose.pose.position.x) == ('kitchen', 3.0)


@pytest.mark.real_model
def test_the_real_model_fills_pose_stamped_under_the_derived_schema(active):
    llm = active(model='smollm2:135m', env={'OLLAMA_EMULATOR_THREADS': '2'})
    prompts = ['Where is the charging dock? It is 2 m ahead and 1 m left, in the map frame.',
               'Give the pose of the kitchen door in the odom frame.']
    for prompt, seed in zip(prompts, (1, 7)):
        run = llm.client.send_chat(Chat.Goal(prompt=f'{prompt} Answer as JSON.',
                                             format=POSE_STAMPED, temperature=0.0, seed=seed,
                                             max_tokens=400))
        assert run.wait_accepted()
        # Up to 400 tokens of the real model on a shared CI machine: a liveness bound only.
        run.wait_result(timeout=300)
        assert run.status == GoalStatus.STATUS_SUCCEEDED, (run.result.error_message,
                                                           run.result.text)
        assert run.result.format_type == POSE_STAMPED
        assert isinstance(typed_answer(run.result, PoseStamped), PoseStamped)
