"""Issue 26: robot tools over DDS. The node calls a pretend robot's service, action and topic
(served by PretendRobot in this process, in the test's domain) for the scripted `tooler` model,
which calls the offered tools named in the prompt and then answers from the last result."""

import json
import pathlib
import re
import threading
from typing import Any, Dict, List, Optional

from action_msgs.msg import GoalStatus
import pytest
import rclpy
from rclpy.action import ActionClient
from rclpy.action import ActionServer
from rclpy.action import CancelResponse
from rclpy.action import GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from s100_llm_demo_interfaces.action import Navigate
from s100_llm_demo_interfaces.srv import Look
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import RobotToolCall
from std_msgs.msg import Int32
from std_msgs.msg import String
import yaml

from harness import assert_aborted
from harness import install_prefix
from harness import NodeProcess
from harness import wait_for
from s100_llm.core.robot_tools import robot_toolbox
from s100_llm.core.robot_tools import RobotTool
from s100_llm.core.robot_tools import RobotToolsProblem
from s100_llm.robot_calls import RosToolBackend

# Navigate goals to this place abort; to FAR they drive (with feedback) until canceled.
NOWHERE = 'nowhere'
FAR = 'far'
# Navigate goals to this place are rejected; to STALLED, answered when the test lets them in
# (then they drive like FAR).
FORBIDDEN = 'forbidden'
STALLED = 'stalled'
# Look requests for this target are answered only when the test ends.
SLOW = 'slow'
# Liveness bound of the tools the tests expect to answer (finding the server included).
LIVENESS = 30
TOOLS = [
    {'name': 'navigate', 'description': 'Drive to a place.', 'kind': 'action',
     'ros_name': '/t_navigate', 'interface_type': 's100_llm_demo_interfaces/action/Navigate',
     'fixed': {'max_speed': 0.25}, 'timeout': LIVENESS},
    {'name': 'look', 'description': 'Look at something.', 'kind': 'service',
     'ros_name': '/t_look', 'interface_type': 's100_llm_demo_interfaces/srv/Look',
     'timeout': LIVENESS},
    {'name': 'say', 'description': 'Say a sentence.', 'kind': 'topic', 'ros_name': '/t_say',
     'interface_type': 'std_msgs/msg/String', 'timeout': LIVENESS},
    {'name': 'count', 'description': 'Show a number.', 'kind': 'topic', 'ros_name': '/t_count',
     'interface_type': 'std_msgs/msg/Int32', 'timeout': LIVENESS},
    # The same look service, with a timeout the SLOW target passes.
    {'name': 'glance', 'description': 'Look quickly.', 'kind': 'service',
     'ros_name': '/t_look', 'interface_type': 's100_llm_demo_interfaces/srv/Look',
     'timeout': 3},
    # The same action, with a timeout a FAR drive passes.
    {'name': 'dash', 'description': 'Drive quickly.', 'kind': 'action',
     'ros_name': '/t_navigate', 'interface_type': 's100_llm_demo_interfaces/action/Navigate',
     'timeout': 3},
    {'name': 'fetch', 'description': 'Nobody serves this.', 'kind': 'service',
     'ros_name': '/t_missing', 'interface_type': 's100_llm_demo_interfaces/srv/Look',
     'timeout': 1},
]
OUT = RobotToolCall


def spin_until_closed(executor: MultiThreadedExecutor,
                      closing: threading.Event) -> threading.Thread:
    """Spin in a thread; rclpy's executor may trip over its own guard condition while it shuts
    down ("cannot use Destroyable"): only an error before `closing` is set counts."""
    def spin() -> None:
        try:
            executor.spin()
        except Exception:
            if not closing.is_set():
                raise
    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return thread


class PretendRobot:
    """The robot's side, recording every call it got: a Navigate action server with feedback,
    a Look service, String and Int32 subscribers; its own context and executor."""

    def __init__(self, domain_id: int) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node('test_robot', context=self.context)
        self.goals: List[Dict[str, Any]] = []       # {'place', 'max_speed', 'end'}
        self.looks: List[str] = []
        self.said: List[str] = []
        self.counts: List[int] = []
        self.release = threading.Event()            # ends what still runs at the test's end
        self.let_in = threading.Event()             # answers STALLED goals
        group = ReentrantCallbackGroup()
        self.navigate = ActionServer(
            self.node, Navigate, '/t_navigate', self._navigate, callback_group=group,
            goal_callback=self._goal_response,
            cancel_callback=lambda _: CancelResponse.ACCEPT)
        self.node.create_service(Look, '/t_look', self._look, callback_group=group)
        self.node.create_subscription(String, '/t_say', lambda m: self.said.append(m.data), 10)
        self.node.create_subscription(Int32, '/t_count',
                                      lambda m: self.counts.append(m.data), 10)
        self.executor = MultiThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._closing = threading.Event()
        self._thread = spin_until_closed(self.executor, self._closing)

    def _goal_response(self, goal: Navigate.Goal) -> GoalResponse:
        if goal.place == STALLED:
            self.let_in.wait()
        return GoalResponse.REJECT if goal.place == FORBIDDEN else GoalResponse.ACCEPT

    def _navigate(self, goal: ServerGoalHandle) -> Navigate.Result:
        record = {'place': goal.request.place, 'max_speed': goal.request.max_speed,
                  'end': 'running'}
        self.goals.append(record)
        if goal.request.place == NOWHERE:
            goal.abort()
            record['end'] = 'aborted'
            return Navigate.Result(arrived=False, message='no such place')
        endless = goal.request.place in (FAR, STALLED)
        for distance in iter(float, 1.0) if endless else (2.0, 1.0):
            if goal.is_cancel_requested:
                goal.canceled()
                record['end'] = 'canceled'
                return Navigate.Result(arrived=False, message='stopped')
            goal.publish_feedback(Navigate.Feedback(distance_remaining=distance))
            if self.release.wait(0.05):
                goal.abort()
                record['end'] = 'released'
                return Navigate.Result()
        goal.succeed()
        record['end'] = 'succeeded'
        return Navigate.Result(arrived=True, message=f'at the {goal.request.place}')

    def _look(self, request: Look.Request, response: Look.Response) -> Look.Response:
        self.looks.append(request.target)
        if request.target == SLOW:
            self.release.wait()
        response.seen = True
        response.description = f'the {request.target} is open'
        return response

    def running_goals(self) -> List[Dict[str, Any]]:
        return [g for g in self.goals if g['end'] == 'running']

    def close(self) -> None:
        self.release.set()
        self.let_in.set()
        self._closing.set()
        self.executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5)
        self.navigate.destroy()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def robot(domain_id: int):
    robot = PretendRobot(domain_id)
    yield robot
    robot.close()


@pytest.fixture
def tools_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / 'robot_tools.yaml'
    path.write_text(yaml.safe_dump({'tools': TOOLS}))
    return str(path)


@pytest.fixture
def tooler(active, tools_file):
    def start(**parameters: Any) -> Any:
        return active(model='tooler:latest', robot_tools_file=tools_file, **parameters)
    return start


class Caller:
    """RosToolBackend on a node of its own in this process (what llm_node runs it on: a
    MultiThreadedExecutor), called from the test's thread as a chat goal's thread calls it."""

    def __init__(self, domain_id: int) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node('test_caller', context=self.context)
        self.backend = RosToolBackend(self.node)
        self.executor = MultiThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._closing = threading.Event()
        self._thread = spin_until_closed(self.executor, self._closing)
        self.tools = {entry['name']: RobotTool(**entry) for entry in TOOLS}

    def call(self, name: str, arguments: Dict[str, Any],
             canceled: Optional[threading.Event] = None) -> tuple:
        reports: List[Any] = []
        outcome, result_json, message = self.backend.call(
            self.tools[name], arguments, lambda feedback: reports.append(json.loads(feedback)),
            canceled or threading.Event())
        return outcome, json.loads(result_json) if result_json else None, message, reports

    def close(self) -> None:
        self.backend.close()
        self._closing.set()
        self.executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def caller(domain_id: int):
    caller = Caller(domain_id)
    yield caller
    caller.close()


def test_the_backend_derives_the_parameters_without_the_fixed_fields(caller):
    # (What each field's schema says is interface_schema's, tested with it.)
    schema = caller.backend.parameters(caller.tools['navigate'])
    assert (list(schema['properties']), schema['required'], schema['additionalProperties']) == (
        ['place'], ['place'], False)
    assert schema['properties']['place']['type'] == 'string'


@pytest.mark.parametrize('interface_type, fixed, problem', [
    ('s100_llm_demo_interfaces/action/Navigate', {'max_speed': 'fast'},
     'field max_speed must be a number, not a string'),
    # A nested mapping fixes the whole message (a dotted name fixes one field of it).
    ('geometry_msgs/msg/PoseStamped', {'header': {'frame_id': 'map'}},
     'field header lacks field stamp'),
    # Fields of an array's items are the model's to fill: none of them can be fixed.
    ('geometry_msgs/msg/PoseArray', {'poses.position': {'x': 0.0, 'y': 0.0, 'z': 0.0}},
     'no message field poses for the fixed field poses.position'),
])
def test_a_fixed_value_that_does_not_fill_its_field_fails_at_configure(
        caller, interface_type, fixed, problem):
    # Found at configure, not at each call as INVALID_ARGUMENTS the model is blamed for.
    kind = {'msg': 'topic', 'action': 'action'}[interface_type.split('/')[1]]
    tool = RobotTool(name='tool', description='d', kind=kind, ros_name='/t_fixed',
                     interface_type=interface_type, fixed=fixed)
    with pytest.raises(RobotToolsProblem) as raised:
        robot_toolbox({'tool': tool}, caller.backend)
    assert problem in str(raised.value)


def test_the_backend_calls_a_service_an_action_and_a_topic(caller, robot):
    assert caller.call('look', {'target': 'door'}) == (
        OUT.SUCCEEDED, {'seen': True, 'description': 'the door is open'}, '', [])
    outcome, result, message, reports = caller.call('navigate', {'place': 'kitchen'})
    assert (outcome, result, message) == (
        OUT.SUCCEEDED, {'arrived': True, 'message': 'at the kitchen'}, '')
    # Each feedback reported (the last one may come after the result, which ends the call).
    assert reports and reports == [{'distance_remaining': 2.0},
                                   {'distance_remaining': 1.0}][:len(reports)]
    assert robot.goals == [{'place': 'kitchen', 'max_speed': 0.25, 'end': 'succeeded'}]
    assert caller.call('say', {'data': 'hi'}) == (OUT.SUCCEEDED, {'published': True}, '', [])
    wait_for(lambda: robot.said == ['hi'], 'the robot to hear it')
    # close() (the node's cleanup) destroys every client and publisher it made.
    caller.backend.close()
    assert list(caller.node.clients) == []
    assert not any(isinstance(w, ActionClient) for w in caller.node.waitables)
    assert '/t_say' not in [publisher.topic_name for publisher in caller.node.publishers]


@pytest.mark.parametrize('name, arguments, outcome, message', [
    ('navigate', {'place': NOWHERE}, OUT.FAILED, "action '/t_navigate' ended ABORTED"),
    ('navigate', {'place': FORBIDDEN}, OUT.NOT_AVAILABLE,
     "action server '/t_navigate' rejected the goal"),
    ('fetch', {'target': 'cup'}, OUT.NOT_AVAILABLE,
     "no server of service '/t_missing' within 1 s"),
    ('glance', {'target': SLOW}, OUT.TIMEOUT, "service '/t_look' did not answer within 3 s"),
    ('dash', {'place': FAR, 'max_speed': 1.0}, OUT.TIMEOUT,
     "action '/t_navigate' did not finish within 3 s (while the action ran); the goal was "
     'canceled'),
    ('navigate', {'place': 'kitchen', 'max_speed': 9.0}, OUT.INVALID_ARGUMENTS, 'max_speed'),
    ('count', {'data': 'many'}, OUT.INVALID_ARGUMENTS, 'data'),
])
def test_each_failure_of_the_backend_is_an_outcome(caller, robot, name, arguments, outcome,
                                                   message):
    got, _, why, _ = caller.call(name, arguments)
    assert (got, message in why) == (outcome, True), why
    # Nothing of the call is left running on the robot's side.
    wait_for(lambda: robot.running_goals() == [], 'no goal running on the robot')


def test_a_goal_accepted_after_the_timeout_is_canceled(caller, robot):
    outcome, _, message, _ = caller.call('dash', {'place': STALLED, 'max_speed': 1.0})
    assert outcome == OUT.TIMEOUT and message.endswith(
        '(before the action server accepted the goal)'), message
    robot.let_in.set()
    wait_for(lambda: [g['end'] for g in robot.goals] == ['canceled'], 'the late goal canceled')


def test_the_backend_cancels_a_running_action_when_the_chat_goal_is_canceled(caller, robot):
    canceled = threading.Event()
    ended: List[tuple] = []
    thread = threading.Thread(target=lambda: ended.append(
        caller.call('navigate', {'place': FAR}, canceled)))
    thread.start()
    wait_for(lambda: robot.running_goals(), 'the robot to drive')
    canceled.set()
    thread.join(timeout=LIVENESS)
    [(outcome, _, message, reports)] = ended
    assert outcome == OUT.CANCELED and message.endswith('the goal was canceled'), message
    assert reports
    wait_for(lambda: robot.goals[0]['end'] == 'canceled', 'the robot to stop')


def calls_of(result: Chat.Result) -> List[tuple]:
    return [(c.step, c.name, json.loads(c.arguments_json), c.outcome) for c in result.robot_calls]


def feedback_calls(run: Any) -> List[tuple]:
    wait_for(lambda: len(run.feedback) >= run.result.feedback_count, 'every feedback')
    return [(c.name, c.outcome) for f in run.feedback for c in f.robot_calls]


def test_the_node_calls_an_action_and_a_service_and_the_model_answers_from_them(tooler, robot):
    llm = tooler()
    # Two steps: the model calls navigate, then (from its result) look, then answers.
    run = llm.client.chat('navigate place=kitchen; look target=door',
                          robot_tools=['navigate', 'look'])
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    result = run.result
    assert calls_of(result) == [(0, 'navigate', {'place': 'kitchen'}, OUT.SUCCEEDED),
                                (1, 'look', {'target': 'door'}, OUT.SUCCEEDED)]
    navigate, look = result.robot_calls
    assert json.loads(navigate.result_json) == {'arrived': True, 'message': 'at the kitchen'}
    assert json.loads(look.result_json) == {'seen': True, 'description': 'the door is open'}
    assert navigate.duration > 0 and look.duration > 0 and not navigate.message
    # The model's last turn answered from the results it was sent.
    assert result.text == (f'navigate returned: {navigate.result_json}; '
                           f'look returned: {look.result_json}')
    assert result.done_reason == Chat.Result.DONE_STOP and result.error_code == Chat.Result.NONE
    # The robot got the calls, with the speed the file fixed (the model never saw it).
    assert [(g['place'], g['max_speed'], g['end']) for g in robot.goals] == [
        ('kitchen', 0.25, 'succeeded')]
    assert robot.looks == ['door']
    # Feedback: each call started, the action's progress (its feedback as JSON), each end.
    # (The action's last feedback may reach the node after its result, which ends the call.)
    progress = [c for f in run.feedback for c in f.robot_calls if c.outcome == OUT.PROGRESS]
    assert feedback_calls(run) == [('navigate', OUT.STARTED)] + [
        ('navigate', OUT.PROGRESS)] * len(progress) + [
        ('navigate', OUT.SUCCEEDED), ('look', OUT.STARTED), ('look', OUT.SUCCEEDED)]
    assert [json.loads(c.result_json) for c in progress] == [
        {'distance_remaining': 2.0}, {'distance_remaining': 1.0}][:len(progress)]
    assert progress, 'no progress of the action in the feedback'


def test_a_tool_the_model_invents_is_not_called(tooler, robot):
    llm = tooler()
    run = llm.client.chat('call:fly place=moon', robot_tools=['navigate'])
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    [call] = run.result.robot_calls
    assert (call.name, call.outcome) == ('fly', OUT.UNKNOWN_TOOL)
    assert call.message in run.result.text
    assert robot.goals == []


def test_a_model_that_keeps_calling_tools_ends_tool_steps(tooler, robot):
    llm = tooler(max_tool_steps=2)
    run = llm.client.send_chat(Chat.Goal(prompt='look target=a; look target=b; look target=c',
                                         robot_tools=['look']))
    result = assert_aborted(run, Chat.Result.TOOL_STEPS, 'max_tool_steps')
    assert calls_of(result) == [(0, 'look', {'target': 'a'}, OUT.SUCCEEDED),
                                (1, 'look', {'target': 'b'}, OUT.LIMIT)]
    assert robot.looks == ['a']


def test_a_topic_tool_publishes_one_message(tooler, robot):
    llm = tooler()
    run = llm.client.chat('say data=hello', robot_tools=['say'])
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert calls_of(run.result) == [(0, 'say', {'data': 'hello'}, OUT.SUCCEEDED)]
    wait_for(lambda: robot.said == ['hello'], 'the robot to hear it')


def test_dry_run_executes_nothing_and_lists_the_planned_calls(tooler, robot):
    llm = tooler()
    run = llm.client.chat('navigate place=kitchen, look target=door, say data=hi',
                          robot_tools=['navigate', 'look', 'say'], dry_run=True)
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert run.result.done_reason == Chat.Result.DONE_TOOL_CALLS
    assert calls_of(run.result) == [(0, 'navigate', {'place': 'kitchen'}, OUT.PLANNED),
                                    (0, 'look', {'target': 'door'}, OUT.PLANNED),
                                    (0, 'say', {'data': 'hi'}, OUT.PLANNED)]
    # The robot saw nothing (the say topic is checked last: nothing published it meanwhile).
    assert robot.goals == [] and robot.looks == [] and robot.said == []


def test_a_robot_tool_not_in_the_file_is_an_invalid_goal(tooler, robot):
    llm = tooler()
    run = llm.client.send_chat(Chat.Goal(prompt='fly place=moon', robot_tools=['fly']))
    assert_aborted(run, Chat.Result.INVALID_GOAL, "'fly'")


def test_arguments_that_do_not_fill_the_type_are_a_result_the_model_sees(tooler, robot):
    llm = tooler()
    run = llm.client.chat('count data=many', robot_tools=['count'])
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    [call] = run.result.robot_calls
    assert (call.name, json.loads(call.arguments_json), call.outcome) == (
        'count', {'data': 'many'}, OUT.INVALID_ARGUMENTS)
    assert call.message and call.message in run.result.text
    assert robot.counts == []


def test_a_missing_server_is_not_available(tooler, robot):
    llm = tooler()
    run = llm.client.chat('fetch target=cup', robot_tools=['fetch'])
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    [call] = run.result.robot_calls
    assert call.outcome == OUT.NOT_AVAILABLE
    assert call.message == "no server of service '/t_missing' within 1 s"
    assert call.message in run.result.text


def test_a_service_that_does_not_answer_in_time_is_a_timeout(tooler, robot):
    llm = tooler()
    run = llm.client.chat(f'glance target={SLOW}', robot_tools=['glance'])
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    [call] = run.result.robot_calls
    assert call.outcome == OUT.TIMEOUT
    assert call.message == "service '/t_look' did not answer within 3 s"
    assert robot.looks == [SLOW]


def test_an_action_that_runs_past_its_timeout_is_canceled(tooler, robot):
    llm = tooler()
    run = llm.client.chat(f'dash place={FAR}', robot_tools=['dash'])
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    [call] = run.result.robot_calls
    assert call.outcome == OUT.TIMEOUT and call.message.endswith('the goal was canceled')
    wait_for(lambda: [g['end'] for g in robot.goals] == ['canceled'], 'the robot to stop')


def test_an_aborted_action_is_failed(tooler, robot):
    llm = tooler()
    run = llm.client.chat(f'navigate place={NOWHERE}', robot_tools=['navigate'])
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    [call] = run.result.robot_calls
    assert call.outcome == OUT.FAILED and call.message == "action '/t_navigate' ended ABORTED"
    assert json.loads(call.result_json) == {'arrived': False, 'message': 'no such place'}


def test_canceling_the_chat_goal_cancels_the_running_action(tooler, robot):
    llm = tooler()
    run = llm.client.send_chat(Chat.Goal(prompt=f'navigate place={FAR}',
                                         robot_tools=['navigate']))
    assert run.wait_accepted()
    wait_for(lambda: any(c.outcome == OUT.PROGRESS for f in run.feedback for c in f.robot_calls),
             'the action to report progress')
    run.cancel()
    result = run.wait_result()
    assert run.status == GoalStatus.STATUS_CANCELED, result.error_message
    assert result.error_code == Chat.Result.CANCELED
    assert calls_of(result) == [(0, 'navigate', {'place': FAR}, OUT.CANCELED)]
    # The robot saw the cancel: nothing of the call is left running.
    wait_for(lambda: [g['end'] for g in robot.goals] == ['canceled'], 'the robot to stop')
    assert robot.running_goals() == []


def test_the_example_makes_the_demo_robot_navigate_look_and_say(active, domain_id, tmp_path):
    # The installed example: config/robot_tools.yaml and the robot_demo executable.
    demo = NodeProcess(domain_id, tmp_path / 'robot_demo.log', {}, name='robot_demo',
                       executable='robot_demo')
    try:
        llm = active(model='tooler:latest', robot_tools_file=str(
            install_prefix() / 'share' / 's100_llm' / 'config' / 'robot_tools.yaml'))
        run = llm.client.chat('navigate place=door; look target=door; say data="it is open"',
                              robot_tools=['navigate', 'look', 'say'])
        assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
        assert [(c.name, c.outcome) for c in run.result.robot_calls] == [
            ('navigate', OUT.SUCCEEDED), ('look', OUT.SUCCEEDED), ('say', OUT.SUCCEEDED)]
        for line in ("navigate to 'door' at 0.5 m/s", "look at 'door': the door is open",
                     'say: it is open'):
            wait_for(lambda: line in demo.output(), f'{line!r} in the robot_demo log')
    finally:
        assert demo.stop() == 0, demo.output()


def test_the_guide_shows_the_installed_tools_file():
    guide = (pathlib.Path(__file__).resolve().parents[3] / 'docs' / 'robot-tools.md').read_text()
    shown = yaml.safe_load(re.search(r'^```yaml\n(.*?)^```', guide, re.M | re.S).group(1))
    installed = install_prefix() / 'share' / 's100_llm' / 'config' / 'robot_tools.yaml'
    assert shown == yaml.safe_load(installed.read_text())


def test_a_rejected_action_goal_leaves_nothing_behind_in_the_client(caller, robot):
    # rclpy keeps a goal's feedback callback until its result is received: a goal rejected (or
    # never answered) would keep it, with the chat goal's whole call record, for as long as
    # the node runs (a robot that rejects goals while busy: one more per call).
    for _ in range(3):
        assert caller.call('navigate', {'place': FORBIDDEN})[0] == OUT.NOT_AVAILABLE
    assert caller.call('dash', {'place': STALLED, 'max_speed': 1.0})[0] == OUT.TIMEOUT
    assert caller.call('navigate', {'place': 'kitchen'})[0] == OUT.SUCCEEDED
    clients = caller.backend._endpoints
    assert [len(client._feedback_callbacks) for client in clients.values()] == [0, 0]
