"""The node's robot tools wiring over DDS: robot_tools_file at configure, the tool names on the
Model status, and a goal's robot_tools and dry_run through the Chat action to Result and
Feedback robot_calls. (The calls of real services and actions: test_robot_tools.py.)"""

import json
import textwrap

from action_msgs.msg import GoalStatus
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import RobotToolCall

from harness import assert_aborted
from harness import wait_for

TOOLS = """\
tools:
  - name: navigate
    description: Drive the robot to a named place.
    kind: action
    ros_name: /navigate_{suffix}
    interface_type: s100_llm_demo_interfaces/action/Navigate
    fixed: {{max_speed: 0.5}}
  - name: look
    description: Say what the camera sees.
    kind: service
    ros_name: /look_{suffix}
    interface_type: s100_llm_demo_interfaces/srv/Look
"""


def tools_file(tmp_path, text=TOOLS):
    path = tmp_path / 'robot_tools.yaml'
    path.write_text(textwrap.dedent(text).format(suffix=tmp_path.name[-8:].replace('-', '_')))
    return str(path)


def test_dry_run_plans_through_the_action_and_the_status_names_the_tools(active, tmp_path):
    llm = active(model='tooler:latest', robot_tools_file=tools_file(tmp_path))
    statuses = llm.client.fresh_statuses(lambda s: 'llm: Model' in s, 'the Model status')
    assert {kv.key: kv.value for kv in statuses['llm: Model'].values}['robot tools'] == (
        'navigate, look')
    run = llm.client.chat('navigate place=kitchen call:fly', robot_tools=['navigate', 'look'],
                          dry_run=True)
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert run.result.done_reason == Chat.Result.DONE_TOOL_CALLS
    planned, invented = run.result.robot_calls
    assert (planned.name, planned.outcome, planned.step) == ('navigate', RobotToolCall.PLANNED,
                                                             0)
    # The fixed max_speed is not the model's to see: the schema offered had only place.
    assert json.loads(planned.arguments_json) == {'place': 'kitchen'}
    assert (invented.name, invented.outcome) == ('fly', RobotToolCall.UNKNOWN_TOOL)
    # Feedback and result travel apart: the last feedback may come just after the result.
    wait_for(lambda: [(c.name, c.outcome) for f in run.feedback for c in f.robot_calls] == [
        ('navigate', RobotToolCall.PLANNED), ('fly', RobotToolCall.UNKNOWN_TOOL)],
        'the planned calls as feedback')


def test_a_goal_naming_a_tool_not_in_the_file_is_invalid(active, tmp_path):
    llm = active(model='tooler:latest', robot_tools_file=tools_file(tmp_path))
    run = llm.client.send_chat(Chat.Goal(prompt='x', robot_tools=['fly']))
    assert_aborted(run, Chat.Result.INVALID_GOAL,
                   "robot tool 'fly' is not in the node's robot_tools_file (its tools: "
                   'navigate, look)')


def test_a_bad_robot_tools_file_fails_configure_with_the_reason(start_llm, tmp_path):
    path = tools_file(tmp_path, TOOLS.replace('srv/Look', 'action/Look'))
    llm = start_llm(model='tooler:latest', robot_tools_file=path)
    assert not llm.client.change_state('configure')
    reason = llm.client.wait_log('robot_tools_file')
    assert (f"robot_tools_file {path}: tool 'look': interface_type "
            "'s100_llm_demo_interfaces/action/Look' is a action type; a service tool needs a "
            'srv type') in reason
    assert llm.client.state() == 'unconfigured' and not llm.leftovers()


def test_a_tool_whose_interface_is_not_installed_fails_configure(start_llm, tmp_path):
    path = tools_file(tmp_path, TOOLS.replace('s100_llm_demo_interfaces/srv/Look',
                                              'no_such_package/srv/Look'))
    llm = start_llm(model='tooler:latest', robot_tools_file=path)
    assert not llm.client.change_state('configure')
    reason = llm.client.wait_log("robot tool 'look'")
    assert 'no_such_package/srv/Look' in reason and 'cannot be offered' in reason
