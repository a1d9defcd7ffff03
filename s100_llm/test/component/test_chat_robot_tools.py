"""The robot tools loop of a chat run against the emulator's `tooler` model (real HTTP through
the ollama client), with a fake backend standing in for the robot: multi-step exchanges, every
refusal, the step limit, dry_run, cancel during a call and the goal's own tools beside them."""

import json
import threading
import time

import pytest

from s100_llm.core import session_file
from s100_llm.core.chat.request import ChatRequest
from s100_llm.core.chat.request import DONE_CANCELED
from s100_llm.core.chat.request import DONE_ERROR
from s100_llm.core.chat.request import DONE_STOP
from s100_llm.core.chat.request import DONE_TOOL_CALLS
from s100_llm.core.chat.request import ErrorCode
from s100_llm.core.chat.run import ChatRun
from s100_llm.core.config import ChatSettings
from s100_llm.core.config import ServerSettings
from s100_llm.core.engine import OllamaEngine
from s100_llm.core.robot_tools import CallOutcome
from s100_llm.core.robot_tools import robot_toolbox
from s100_llm.core.robot_tools import RobotTool
from s100_llm.core.server import OllamaServer
from s100_llm.core.sessions import SessionStore
from support import free_port

OK, STARTED, PROGRESS = CallOutcome.SUCCEEDED, CallOutcome.STARTED, CallOutcome.PROGRESS
NO_ARGUMENTS = {'type': 'object', 'properties': {}}
TOOLS = {
    'navigate': (RobotTool('navigate', 'Drive to a place.', 'action', '/navigate',
                           's100_llm_demo_interfaces/action/Navigate', {'max_speed': 0.5}),
                 {'type': 'object', 'properties': {'place': {'enum': ['kitchen', 'dock']}},
                  'required': ['place']}),
    'look': (RobotTool('look', 'Say what the camera sees.', 'service', '/look',
                       's100_llm_demo_interfaces/srv/Look'), NO_ARGUMENTS),
    'wave': (RobotTool('wave', 'Wave once.', 'topic', '/wave', 'std_msgs/msg/Empty',
                       max_calls=1), NO_ARGUMENTS),
    'wait': (RobotTool('wait', 'Wait until told.', 'action', '/wait',
                       's100_llm_demo_interfaces/action/Navigate'), NO_ARGUMENTS),
    'broken': (RobotTool('broken', 'A defect.', 'service', '/broken',
                         's100_llm_demo_interfaces/srv/Look'), NO_ARGUMENTS),
}
BATTERY = {'name': 'report_battery', 'description': 'Battery level.', 'parameters_json': ''}


class FakeRobot:
    """The backend: records every call; `wait` blocks until the goal is canceled."""

    def __init__(self) -> None:
        self.calls = []
        self.waiting = threading.Event()

    def parameters(self, tool):
        return TOOLS[tool.name][1]

    def call(self, tool, arguments, report, canceled):
        self.calls.append((tool.name, arguments))
        if tool.name == 'navigate':
            for progress in range(3):
                report(json.dumps({'progress': progress}))
            return OK, json.dumps({'arrived': arguments['place']}), ''
        if tool.name == 'wait':
            self.waiting.set()
            if canceled.wait(30):   # a liveness bound: the test cancels at once
                return CallOutcome.CANCELED, '', 'the goal was canceled'
            return CallOutcome.TIMEOUT, '', 'not canceled'
        if tool.name == 'broken':
            raise RuntimeError('a defect')
        return OK, json.dumps({'seen': 'a closed door'}), ''


@pytest.fixture(scope='module')
def engine(tmp_path_factory):
    server = OllamaServer(ServerSettings(host=f'127.0.0.1:{free_port()}',
                                         ollama_bin='s100-ollama-emulator'),
                          str(tmp_path_factory.mktemp('models')), lambda level, line: None)
    server.start()
    engine = OllamaEngine(server.base_url, 30)
    engine.pull('tooler', lambda *_: None)
    yield engine
    engine.close()
    server.stop()


class Goal:
    """One goal's run with its feedback and log lines."""

    def __init__(self, engine, robot=None, sessions=None, max_tool_steps=5, **fields):
        self.robot = robot or FakeRobot()
        self.sessions = sessions or SessionStore(5, 5)
        self.feedback = []
        self.log = []
        toolbox = robot_toolbox({name: tool for name, (tool, _) in TOOLS.items()}, self.robot)
        self.run = ChatRun(engine, 'tooler', ChatRequest(**fields),
                           ChatSettings(max_tool_steps=max_tool_steps), self.sessions, 4096,
                           -1, lambda *message: self.feedback.append(message),
                           time.monotonic(), toolbox=toolbox, log=self.log.append)

    def entries(self):
        return [(entry.name, entry.outcome) for message in self.feedback
                for entry in message[3]]


def outcomes(outcome):
    return [(call.step, call.name, call.outcome) for call in outcome.robot_calls]


def test_a_two_step_exchange_calls_each_tool_and_answers_from_the_results(engine):
    goal = Goal(engine, prompt='navigate place=kitchen; look', robot_tools=['navigate', 'look'],
                session_id='s')
    outcome = goal.run.run()
    assert (outcome.done_reason, outcome.error_code) == (DONE_STOP, ErrorCode.NONE)
    assert outcome.text == ('navigate returned: {"arrived": "kitchen"}; '
                            'look returned: {"seen": "a closed door"}')
    assert outcomes(outcome) == [(0, 'navigate', OK), (1, 'look', OK)]
    assert outcome.robot_calls[0].arguments_json == '{"place": "kitchen"}'
    assert outcome.robot_calls[0].duration > 0
    assert goal.robot.calls == [('navigate', {'place': 'kitchen'}), ('look', {})]
    # Feedback: started, progress, the end. Progress is rate-limited: the three reports come
    # at once, so the second is usually replaced by the third; the first and the latest always
    # go out (the latest before the end).
    entries = goal.entries()
    assert entries[:2] == [('navigate', STARTED), ('navigate', PROGRESS)]
    assert entries[-3:] == [('navigate', OK), ('look', STARTED), ('look', OK)]
    progress = [entry.result_json for message in goal.feedback for entry in message[3]
                if entry.outcome == PROGRESS]
    assert progress[0] == '{"progress": 0}' and progress[-1] == '{"progress": 2}'
    assert len(entries) == 4 + len(progress)
    assert [line.split(':')[0] for line in goal.log] == [
        "robot tool 'navigate' (step 0)", "robot tool 'look' (step 1)"]
    # The session keeps the exchange as Ollama was sent it, and the next goal continues it.
    (turn,) = goal.sessions.get('s').turns
    assert [m['role'] for m in turn.messages] == ['user', 'assistant', 'tool', 'assistant',
                                                  'tool', 'assistant']
    assert turn.messages[1]['tool_calls'] == [
        {'function': {'name': 'navigate', 'arguments': {'place': 'kitchen'}}}]
    assert turn.messages[2] == {'role': 'tool', 'tool_name': 'navigate',
                                'content': '{"arrived": "kitchen"}'}
    # The sessions file keeps it as it is (the node reloads it at its next configure).
    stored = goal.sessions.snapshot()
    assert session_file.parse(session_file.serialize(stored)) == stored
    again = Goal(engine, sessions=goal.sessions, prompt='look', robot_tools=['look'],
                 session_id='s').run.run()
    assert again.text == 'look returned: {"seen": "a closed door"}' and again.session_turns == 2


def test_an_unknown_tool_and_bad_arguments_are_results_the_model_sees(engine):
    goal = Goal(engine, prompt='call:fly; navigate place=garden; look',
                robot_tools=['navigate', 'look'])
    outcome = goal.run.run()
    assert outcomes(outcome) == [(0, 'fly', CallOutcome.UNKNOWN_TOOL),
                                 (1, 'navigate', CallOutcome.INVALID_ARGUMENTS), (2, 'look', OK)]
    assert "no tool 'fly' was offered (offered: navigate, look)" in outcome.robot_calls[0].message
    assert "'garden' is not one of ['kitchen', 'dock']" in outcome.robot_calls[1].message
    assert 'fly returned: UNKNOWN_TOOL: no tool' in outcome.text
    assert 'navigate returned: INVALID_ARGUMENTS: the arguments do not match' in outcome.text
    assert goal.robot.calls == [('look', {})]       # only what passed was executed
    assert outcome.error_code == ErrorCode.NONE


def test_a_tool_beyond_its_calls_per_goal_is_not_executed(engine):
    outcome = Goal(engine, prompt='wave; wave', robot_tools=['wave']).run.run()
    assert outcomes(outcome) == [(0, 'wave', OK), (1, 'wave', CallOutcome.LIMIT)]
    assert outcome.robot_calls[1].message == "'wave' may be called 1 time(s) per goal"


def test_a_model_that_keeps_calling_tools_ends_after_max_tool_steps(engine):
    goal = Goal(engine, max_tool_steps=2, prompt='look; look; look', robot_tools=['look'],
                session_id='s')
    outcome = goal.run.run()
    assert (outcome.done_reason, outcome.error_code) == (DONE_ERROR, ErrorCode.TOOL_STEPS)
    assert 'after 2 model turns (max_tool_steps)' in outcome.error_message
    assert outcomes(outcome) == [(0, 'look', OK), (1, 'look', CallOutcome.LIMIT)]
    assert len(goal.robot.calls) == 1 and 's' not in goal.sessions


def test_dry_run_plans_the_first_turn_and_executes_nothing(engine):
    goal = Goal(engine, prompt='navigate place=kitchen call:fly; look', dry_run=True,
                robot_tools=['navigate', 'look'], session_id='s')
    outcome = goal.run.run()
    assert outcome.done_reason == DONE_TOOL_CALLS and outcome.error_code == ErrorCode.NONE
    assert outcomes(outcome) == [(0, 'navigate', CallOutcome.PLANNED),
                                 (0, 'fly', CallOutcome.UNKNOWN_TOOL)]
    assert goal.robot.calls == [] and 's' not in goal.sessions


def test_cancel_during_a_call_cancels_it_and_stops_the_loop(engine):
    goal = Goal(engine, prompt='wait; look', robot_tools=['wait', 'look'], session_id='s')
    ended = []
    runner = threading.Thread(target=lambda: ended.append(goal.run.run()))
    runner.start()
    assert goal.robot.waiting.wait(30)
    goal.run.cancel('canceled by the client', ErrorCode.CANCELED)
    runner.join(30)
    (outcome,) = ended
    assert (outcome.done_reason, outcome.error_code) == (DONE_CANCELED, ErrorCode.CANCELED)
    assert outcomes(outcome) == [(0, 'wait', CallOutcome.CANCELED)]
    assert goal.robot.calls == [('wait', {})] and 's' not in goal.sessions


def test_the_goals_own_tool_ends_the_goal_after_the_robot_calls_beside_it(engine):
    goal = Goal(engine, prompt='look report_battery', robot_tools=['look'], tools=[BATTERY],
                session_id='s')
    outcome = goal.run.run()
    assert outcome.done_reason == DONE_TOOL_CALLS
    assert [call.name for call in outcome.tool_calls] == ['report_battery']
    assert outcomes(outcome) == [(0, 'look', OK)]
    # The session waits for the behaviour's result of its own call.
    assert list(goal.sessions.pending_calls('s').values()) == ['report_battery']


def test_a_backend_that_raises_is_a_failed_call_and_the_goal_goes_on(engine):
    outcome = Goal(engine, prompt='broken', robot_tools=['broken']).run.run()
    assert outcomes(outcome) == [(0, 'broken', CallOutcome.FAILED)]
    assert outcome.robot_calls[0].message == 'the call raised RuntimeError: a defect'
    assert outcome.text == 'broken returned: FAILED: the call raised RuntimeError: a defect'
