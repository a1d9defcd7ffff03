"""The robot_tools_file: what it declares, and every problem named by file, tool and field."""

import os
import textwrap

import pytest

from s100_llm.core.robot_tools import DEFAULT_TIMEOUT
from s100_llm.core.robot_tools import load_robot_tools
from s100_llm.core.robot_tools import MAX_FILE_BYTES
from s100_llm.core.robot_tools import robot_toolbox
from s100_llm.core.robot_tools import RobotTool
from s100_llm.core.robot_tools import RobotToolsProblem

GOOD = """\
tools:
  - name: navigate
    description: Drive the robot to a named place.
    kind: action
    ros_name: /navigate
    interface_type: s100_llm_demo_interfaces/action/Navigate
    fixed: {max_speed: 0.5}
    timeout: 60
    max_calls: 3
  - name: look
    description: Say what the camera sees.
    kind: service
    ros_name: look
    interface_type: s100_llm_demo_interfaces/srv/Look
  - name: say
    description: Speak a sentence.
    kind: topic
    ros_name: /say
    interface_type: std_msgs/msg/String
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / 'tools.yaml'
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_file_declares_its_tools_in_order(tmp_path):
    tools = load_robot_tools(write(tmp_path, GOOD))
    assert list(tools) == ['navigate', 'look', 'say']
    assert tools['navigate'] == RobotTool(
        name='navigate', description='Drive the robot to a named place.', kind='action',
        ros_name='/navigate', interface_type='s100_llm_demo_interfaces/action/Navigate',
        fixed={'max_speed': 0.5}, timeout=60.0, max_calls=3)
    assert tools['look'].fixed == {} and tools['look'].timeout == DEFAULT_TIMEOUT
    assert tools['say'].max_calls == 0


def tool(**changes) -> str:
    fields = {'name': 'look', 'description': 'Look.', 'kind': 'service', 'ros_name': '/look',
              'interface_type': 's100_llm_demo_interfaces/srv/Look'}
    fields.update(changes)
    lines = ''.join(f'    {key}: {value}\n' for key, value in fields.items() if value is not None)
    return 'tools:\n  - ' + lines[4:]


@pytest.mark.parametrize('text, problem', [
    (tool(kind='service', interface_type='s100_llm_demo_interfaces/action/Navigate'),
     "tool 'look': interface_type 's100_llm_demo_interfaces/action/Navigate' is a action type; "
     'a service tool needs a srv type'),
    (tool(kind='topic'), "tool 'look': interface_type .* is a srv type; a topic tool needs a "
                         'msg type'),
    (tool(kind='parameter'), "tool 'look': kind 'parameter' must be service, action or topic"),
    (tool(speed=3), "tool 'look': unknown key\\(s\\) speed"),
    (tool(name='look around'), r'tools\[0\]: name must be 1..64 letters'),
    (tool(name=None), r'tools\[0\]: name must be'),
    (tool(description=None), "tool 'look': description must be a non-empty string"),
    (tool(ros_name="'/look here'"), "tool 'look': ros_name '/look here' is not a valid ROS name"),
    (tool(interface_type='Look'), "tool 'look': interface_type 'Look' is not package"),
    (tool(timeout=0), "tool 'look': timeout must be a number of seconds"),
    (tool(timeout='soon'), "tool 'look': timeout must be a number"),
    (tool(max_calls=-1), "tool 'look': max_calls must be an integer >= 0"),
    (tool(max_calls=1.5), "tool 'look': max_calls must be an integer"),
    (tool(fixed='[1, 2]'), "tool 'look': fixed must be a mapping"),
    (tool() + tool()[len('tools:\n'):], "tool 'look' is declared twice"),
    ('tools: {look: 1}', 'tools must be a list'),
    ('look: {}', 'expected one key, tools'),
    ('tools: [', 'not valid YAML'),
    ('tools: [3]', r'tools\[0\] must be a mapping'),
])
def test_every_problem_names_the_file_the_tool_and_the_field(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(RobotToolsProblem, match=f'robot_tools_file {path}: ' + problem):
        load_robot_tools(path)


def test_only_a_regular_file_of_bounded_size_is_read(tmp_path):
    with pytest.raises(RobotToolsProblem, match='is not a regular file'):
        load_robot_tools(str(tmp_path))
    with pytest.raises(RobotToolsProblem, match='cannot be read: No such file'):
        load_robot_tools(str(tmp_path / 'missing.yaml'))
    big = tmp_path / 'big.yaml'
    big.write_text('#' * (MAX_FILE_BYTES + 1))
    with pytest.raises(RobotToolsProblem, match='holds more than'):
        load_robot_tools(str(big))
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    with pytest.raises(RobotToolsProblem, match='not a regular file'):
        load_robot_tools(str(fifo))     # a FIFO with no writer: refused, configure not held


class Backend:
    """parameters() answers from a table: a schema, or an exception to raise."""

    def __init__(self, **schemas) -> None:
        self.schemas = schemas

    def parameters(self, tool):
        schema = self.schemas[tool.name]
        if isinstance(schema, Exception):
            raise schema
        return schema

    def call(self, tool, arguments, report, canceled):
        raise AssertionError('nothing is called at configure')


PLACE = {'type': 'object', 'properties': {'place': {'type': 'string'}}, 'required': ['place']}
NONE = {'type': 'object', 'properties': {}}


def test_the_toolbox_offers_each_tool_as_a_function_with_its_schema(tmp_path):
    tools = load_robot_tools(write(tmp_path, GOOD))
    toolbox = robot_toolbox(tools, Backend(navigate=PLACE, look=NONE, say=NONE))
    assert toolbox.offer('navigate') == {'type': 'function', 'function': {
        'name': 'navigate', 'description': 'Drive the robot to a named place.',
        'parameters': PLACE}}


@pytest.mark.parametrize('schema, problem', [
    (LookupError('s100_llm_demo_interfaces/action/Navigate is not installed'),
     "robot tool 'navigate' .s100_llm_demo_interfaces/action/Navigate. cannot be offered: "
     's100_llm_demo_interfaces/action/Navigate is not installed'),
    ({'type': 'string'}, "robot tool 'navigate': its parameters are not a JSON Schema of type "
                         'object'),
    ({'type': 'object', 'properties': {'x': {'type': 'strange'}}},
     "robot tool 'navigate': the parameters is not a valid JSON Schema"),
])
def test_a_tool_the_backend_cannot_offer_is_named_with_the_reason(tmp_path, schema, problem):
    tools = load_robot_tools(write(tmp_path, GOOD))
    with pytest.raises(RobotToolsProblem, match=problem):
        robot_toolbox(tools, Backend(navigate=schema, look=NONE, say=NONE))
