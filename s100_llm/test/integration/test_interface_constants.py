"""What the ROS-free core shares with the ROS side: its copies of the interfaces' constants, and
the TTS bridge's sentence splitter (tts_bridge imports rclpy). Moved out of test/unit, which
runs without the ROS 2 wheels too (make test-jammy). And the Log level constants, whatever type
this distro's rosidl gives them, are the levels a received message carries."""

import pytest
from rcl_interfaces.msg import Log
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import RobotToolCall
from s100_llm_msgs.srv import Embed

from s100_llm.core.chat import request as chat_request
from s100_llm.core.chat.request import ErrorCode
from s100_llm.core.embedding import EmbedErrorCode
from s100_llm.core.robot_tools import CallOutcome
from s100_llm.tts_bridge import SentenceSplitter
from support import log_level


def test_the_core_constants_are_the_interfaces():
    """core.chat is ROS-free: its copies of Chat.action's constants must equal them."""
    for name in ('THINK_DEFAULT', 'THINK_ON', 'THINK_OFF', 'THINK_LOW', 'THINK_MEDIUM',
                 'THINK_HIGH', 'THINK_MAX'):
        assert getattr(chat_request, name) == getattr(Chat.Goal, name), name
    for name in ('DONE_STOP', 'DONE_LENGTH', 'DONE_CANCELED', 'DONE_ERROR', 'DONE_TOOL_CALLS',
                 'DONE_DEADLINE'):
        assert getattr(chat_request, name) == getattr(Chat.Result, name), name
    constants = type(Chat.Result).__prepare__('Result', ())   # rosidl: the constants by name
    codes = {name: value for name, value in constants.items() if not name.startswith('DONE_')}
    assert codes == {code.name: code.value for code in ErrorCode}


def test_the_robot_call_outcomes_are_the_message():
    constants = type(RobotToolCall).__prepare__('RobotToolCall', ())
    assert constants == {outcome.name: outcome.value for outcome in CallOutcome}


def test_the_error_codes_are_the_services():
    for code in EmbedErrorCode:
        assert getattr(Embed.Response, code.name) == code.value


def test_sentence_splitter_hands_out_whole_sentences():
    splitter = SentenceSplitter()
    assert splitter.feed('Hello there. How') == ['Hello there.']
    assert splitter.feed(' are you? Fine') == ['How are you?']
    assert splitter.feed('\nOK') == ['Fine']
    assert splitter.flush() == ['OK']


def test_the_log_constants_are_the_levels():
    assert [log_level(level) for level in (Log.DEBUG, Log.INFO, Log.WARN, Log.ERROR, Log.FATAL)] \
        == [10, 20, 30, 40, 50]


def test_messages_check_their_fields_as_on_humble():
    """conftest sets ROS_PYTHON_CHECK_FIELDS=1: a field of the wrong type fails in the tests as
    it does on Humble, which always checks."""
    with pytest.raises(AssertionError, match='max_tokens'):
        Chat.Goal(max_tokens='many')
