"""Typed answers without DDS: the node's resolution of a format naming a message type
(chat_action.resolve_typed_format, check_typed_answer) and the client's typed_answer."""

import json
from typing import Any
from unittest import mock

from geometry_msgs.msg import PoseStamped
import pytest
from s100_llm_msgs.action import Chat

from s100_llm.chat_action import ChatGoal
from s100_llm.chat_action import check_typed_answer
from s100_llm.chat_action import resolve_typed_format
from s100_llm.client import ChatError
from s100_llm.client import typed_answer
from s100_llm.core.chat.request import ChatOutcome
from s100_llm.core.chat.request import ChatRequest
from s100_llm.core.chat.request import ErrorCode
from s100_llm.core.chat.request import Refusal
from s100_llm.interface_schema import message_schema

POSE = {'header': {'stamp': {'sec': 1, 'nanosec': 2}, 'frame_id': 'map'},
        'pose': {'position': {'x': 1.0, 'y': 2.0, 'z': 0.0},
                 'orientation': {'x': 0.0, 'y': 0.0, 'z': 0.0, 'w': 1.0}}}


def goal_with_format(text: str) -> ChatGoal:
    return ChatGoal(mock.Mock(), ChatRequest(prompt='where?', output_format=text), 0.0)


@pytest.mark.parametrize('name', ['geometry_msgs/msg/PoseStamped', 'geometry_msgs/PoseStamped'])
def test_a_type_name_becomes_its_schema_for_the_core(name: str) -> None:
    goal = goal_with_format(name)
    resolve_typed_format(goal)
    assert json.loads(goal.request.output_format) == message_schema(PoseStamped)
    assert goal.format_class is PoseStamped
    assert goal.format_type == 'geometry_msgs/msg/PoseStamped'


@pytest.mark.parametrize('text', ['', 'json', '{"type": "object"}'])
def test_other_formats_are_left_to_the_core(text: str) -> None:
    goal = goal_with_format(text)
    resolve_typed_format(goal)
    assert goal.request.output_format == text and goal.format_class is None
    assert goal.format_type == ''


@pytest.mark.parametrize('name, words', [
    ('nope_msgs/msg/Where', ['format: nope_msgs/msg/Where is not installed']),
    ('sensor_msgs/msg/Image', ['format: sensor_msgs/msg/Image', 'binary data']),
    ('std_msgs/srv/Empty', ['format: std_msgs/srv/Empty is a service type']),
])
def test_unusable_types_are_refused_invalid_goal(name: str, words: Any) -> None:
    with pytest.raises(Refusal) as raised:
        resolve_typed_format(goal_with_format(name))
    assert raised.value.code == ErrorCode.INVALID_GOAL
    for word in words:
        assert word in raised.value.reason


def served(text: str) -> ChatOutcome:
    return ChatOutcome(text=text, done_reason='stop', error_code=ErrorCode.NONE)


def test_a_served_answer_that_fills_the_type_stays_served() -> None:
    outcome = served(json.dumps(POSE))
    check_typed_answer(outcome, PoseStamped)
    assert outcome.error_code == ErrorCode.NONE


def test_a_served_answer_that_does_not_fill_the_type_is_a_format_mismatch() -> None:
    text = json.dumps({**POSE, 'header': {'frame_id': 'map'}})
    outcome = served(text)
    check_typed_answer(outcome, PoseStamped)
    assert outcome.error_code == ErrorCode.FORMAT_MISMATCH
    assert outcome.done_reason == 'error' and outcome.text == text
    assert outcome.error_message == ('the answer does not fill geometry_msgs/msg/PoseStamped: '
                                     'field header lacks field stamp')


def test_an_unserved_outcome_is_left_as_it_is() -> None:
    outcome = ChatOutcome.unserved(ErrorCode.CANCELED, 'canceled by the client')
    check_typed_answer(outcome, PoseStamped)
    assert outcome.error_code == ErrorCode.CANCELED


def test_typed_answer_returns_the_message() -> None:
    result = Chat.Result(text=json.dumps(POSE), format_type='geometry_msgs/msg/PoseStamped')
    pose = typed_answer(result, PoseStamped)
    assert isinstance(pose, PoseStamped) and pose.header.frame_id == 'map'


def test_typed_answer_raises_format_mismatch_for_text_that_does_not_fill() -> None:
    result = Chat.Result(text='{"header": 1, "pose": {}}')
    with pytest.raises(ChatError) as raised:
        typed_answer(result, PoseStamped)
    assert raised.value.error_code == Chat.Result.FORMAT_MISMATCH
    assert 'PoseStamped: field header must be an object' in raised.value.error_message
    assert raised.value.result.text == '{"header": 1, "pose": {}}'
    assert result.error_code == Chat.Result.NONE     # the caller's result is left as it was


def test_typed_answer_raises_the_results_own_error() -> None:
    result = Chat.Result(error_code=Chat.Result.DEADLINE, error_message='too late')
    with pytest.raises(ChatError) as raised:
        typed_answer(result, PoseStamped)
    assert raised.value.error_code == Chat.Result.DEADLINE
