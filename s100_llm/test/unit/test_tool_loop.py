"""The robot tools of one goal without a model: the checks of each call, what the model is sent
back, and an action's feedback rate-limited without losing the latest."""

import threading

import pytest

from s100_llm.core.chat.tool_loop import MAX_RESULT_CHARS
from s100_llm.core.chat.tool_loop import RobotTools
from s100_llm.core.robot_tools import CallOutcome
from s100_llm.core.robot_tools import RobotTool
from s100_llm.core.robot_tools import RobotToolbox

PLACE = {'type': 'object', 'properties': {'place': {'type': 'string'}}, 'required': ['place'],
         'additionalProperties': False}
NAVIGATE = RobotTool('navigate', 'Drive.', 'action', '/navigate',
                     's100_llm_demo_interfaces/action/Navigate', max_calls=2)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Robot:
    """An action whose feedback arrives at the times the test sets."""

    def __init__(self, clock: Clock, feedback) -> None:
        self.clock = clock
        self.feedback = feedback
        self.calls = []
        self.result = '{"arrived": true}'

    def parameters(self, tool):
        return PLACE

    def call(self, tool, arguments, report, canceled):
        self.calls.append(arguments)
        for at, progress in self.feedback:
            self.clock.now = at
            report(progress)
        self.clock.now += 1.0
        return CallOutcome.SUCCEEDED, self.result, ''


def tools_with(feedback=()):
    clock = Clock()
    robot = Robot(clock, feedback)
    sent, log = [], []
    tools = RobotTools(RobotToolbox({'navigate': NAVIGATE}, {'navigate': PLACE}, robot),
                       ['navigate'], sent.extend, log.append, 0.0, clock)
    return tools, robot, sent, log


def test_feedback_within_the_interval_is_held_and_the_latest_goes_out_before_the_end():
    tools, _, sent, _ = tools_with([(100.0, 'a'), (100.1, 'b'), (100.15, 'c'), (100.3, 'd'),
                                    (100.35, 'e')])
    tools.execute(0, [('navigate', {'place': 'dock'})], threading.Event())
    assert [(entry.outcome, entry.result_json) for entry in sent] == [
        (CallOutcome.STARTED, ''), (CallOutcome.PROGRESS, 'a'),     # at once
        (CallOutcome.PROGRESS, 'd'),    # 0.3 s after 'a': due; 'b' and 'c' were replaced
        (CallOutcome.PROGRESS, 'e'),    # held, sent when the call ended
        (CallOutcome.SUCCEEDED, '{"arrived": true}')]
    assert sent[-1].duration == pytest.approx(1.35)


def test_each_refusal_is_what_the_model_reads_and_nothing_is_called():
    tools, robot, sent, log = tools_with()
    results = tools.execute(3, [('fly', {}), ('navigate', {'place': 'dock', 'speed': 9}),
                                ('navigate', {'place': 'dock'}), ('navigate', {'place': 'hall'}),
                                ('navigate', {'place': 'door'})], threading.Event())
    assert [(call.step, call.outcome) for call in tools.calls] == [
        (3, CallOutcome.UNKNOWN_TOOL), (3, CallOutcome.INVALID_ARGUMENTS),
        (3, CallOutcome.SUCCEEDED), (3, CallOutcome.SUCCEEDED), (3, CallOutcome.LIMIT)]
    assert robot.calls == [{'place': 'dock'}, {'place': 'hall'}]
    assert results[0] == {'role': 'tool', 'tool_name': 'fly', 'content':
                          "UNKNOWN_TOOL: no tool 'fly' was offered (offered: navigate)"}
    assert results[1]['content'].startswith(
        "INVALID_ARGUMENTS: the arguments do not match the tool's parameters: Additional "
        "properties are not allowed ('speed' was unexpected)")
    assert results[2] == {'role': 'tool', 'tool_name': 'navigate',
                          'content': '{"arrived": true}'}
    assert results[4]['content'] == "LIMIT: 'navigate' may be called 2 time(s) per goal"
    assert len(log) == 5 and log[0].startswith("robot tool 'fly' (step 3): UNKNOWN_TOOL in ")


def test_a_canceled_goal_stops_after_the_call_it_interrupted():
    tools, robot, _, _ = tools_with()
    canceled = threading.Event()
    canceled.set()      # the backend returned (as it does when canceled); nothing follows
    results = tools.execute(0, [('navigate', {'place': 'dock'}),
                                ('navigate', {'place': 'hall'})], canceled)
    assert len(results) == 1 and robot.calls == [{'place': 'dock'}] and len(tools.calls) == 1


def test_a_result_too_long_for_the_model_is_not_sent():
    tools, robot, _, _ = tools_with()
    robot.result = '"' + 'x' * MAX_RESULT_CHARS + '"'
    (result,) = tools.execute(0, [('navigate', {'place': 'dock'})], threading.Event())
    (call,) = tools.calls
    assert (call.outcome, call.result_json) == (CallOutcome.FAILED, '')
    assert call.message == (f'the result has {MAX_RESULT_CHARS + 2} characters, more than the '
                            f'{MAX_RESULT_CHARS} a tool result may have: it is not sent to the '
                            'model')
    assert result['content'] == f'FAILED: {call.message}'


def test_feedback_too_long_for_a_tool_result_goes_out_as_a_note():
    # The bound of a result holds for an action's feedback too: each one is published to the
    # chat goal's clients (a path or a map in the feedback would go out several times a second).
    huge = '"' + 'x' * MAX_RESULT_CHARS + '"'
    tools, _, sent, _ = tools_with([(100.0, huge), (100.1, huge)])
    tools.execute(0, [('navigate', {'place': 'dock'})], threading.Event())
    progress = [entry for entry in sent if entry.outcome == CallOutcome.PROGRESS]
    assert [(entry.result_json, entry.message) for entry in progress] == [
        ('', f'the feedback has {MAX_RESULT_CHARS + 2} characters, more than the '
             f'{MAX_RESULT_CHARS} a tool result may have: it is not sent')] * 2
