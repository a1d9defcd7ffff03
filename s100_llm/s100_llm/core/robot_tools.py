"""Robot tools, ROS-free: the skills a robot_tools_file lets the model use (RobotTool), the file's
loader (every problem a RobotToolsProblem naming the file, the tool and the field), the outcome
of one call (CallOutcome, RobotCall: RobotToolCall.msg as plain values) and what executes the
calls (RobotToolBackend: the ROS side implements it, tests fake it).

The file (YAML):

    tools:
      - name: navigate                 # the function name the model calls
        description: Drive the robot to a named place.
        kind: action                   # service | action | topic
        ros_name: /navigate
        interface_type: s100_llm_demo_interfaces/action/Navigate
        fixed: {max_speed: 0.5}        # fields the model never sees or sets (optional)
        timeout: 60                    # seconds (optional, default 30)
        max_calls: 3                   # per goal (optional, default 0: unlimited)
"""

import dataclasses
import enum
import os
import re
import stat
import threading
from typing import Any, Callable, Dict, Mapping, Protocol, Tuple

import yaml

from .schema import schema_problem

# Ollama's function names (and what OpenAI-style tool parsers accept).
TOOL_NAME = re.compile(r'[A-Za-z0-9_-]{1,64}')
# A ROS name (absolute, relative or ~/private): tokens of letters, digits and '_'.
ROS_NAME = re.compile(r'(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*')
# package/kind/Type, as `ros2 interface show` names them.
INTERFACE_TYPE = re.compile(r'([a-z][a-z0-9_]*)/(msg|srv|action)/([A-Z][A-Za-z0-9]*)')
# The interface kind each tool kind calls with.
INTERFACE_KIND = {'service': 'srv', 'action': 'action', 'topic': 'msg'}
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 86400.0
# A tools file is written by hand: far below this. A bound on what configure reads.
MAX_FILE_BYTES = 1024 * 1024
MAX_TOOLS = 64              # a goal offers at most this many tools of its own, too
MAX_DESCRIPTION_CHARS = 2000
KEYS = ('name', 'description', 'kind', 'ros_name', 'interface_type', 'fixed', 'timeout',
        'max_calls')
REQUIRED = ('name', 'description', 'kind', 'ros_name', 'interface_type')


class RobotToolsProblem(Exception):
    """The robot_tools_file cannot be used: configure fails with this reason."""


@dataclasses.dataclass(frozen=True)
class RobotTool:
    """One skill of the file: what the model is offered and what the node calls."""

    name: str
    description: str
    kind: str                   # 'service' | 'action' | 'topic'
    ros_name: str
    interface_type: str         # e.g. 's100_llm_demo_interfaces/action/Navigate'
    # Request/goal/message fields the file fixes: the model never sees or sets them.
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT    # seconds
    max_calls: int = 0                  # per goal; 0: unlimited


class CallOutcome(enum.IntEnum):
    """RobotToolCall.outcome (see RobotToolCall.msg; test_interface_constants ties them)."""

    STARTED = 0
    PROGRESS = 1
    SUCCEEDED = 2
    PLANNED = 3
    UNKNOWN_TOOL = 4
    INVALID_ARGUMENTS = 5
    NOT_AVAILABLE = 6
    TIMEOUT = 7
    FAILED = 8
    CANCELED = 9
    LIMIT = 10


@dataclasses.dataclass
class RobotCall:
    """One call of a robot tool: RobotToolCall.msg as plain values."""

    step: int                   # the model turn (0, 1, ...) that asked for it
    name: str
    arguments_json: str
    outcome: CallOutcome
    result_json: str = ''
    message: str = ''
    duration: float = 0.0       # seconds


ProgressSink = Callable[[str], None]    # an action's feedback, as JSON


class RobotToolBackend(Protocol):
    """Executes robot tools (the ROS side: s100_llm.robot_calls.RosToolBackend)."""

    def parameters(self, tool: RobotTool) -> Dict[str, Any]:
        """The JSON Schema (type object) of the tool's arguments, its fixed fields left out;
        raises an exception saying why when the interface cannot be used."""

    def call(self, tool: RobotTool, arguments: Dict[str, Any], report: ProgressSink,
             canceled: threading.Event) -> Tuple[CallOutcome, str, str]:
        """Call the tool with the arguments (the fixed fields added); blocks until it is done,
        its timeout passed or `canceled` is set (an action is then canceled). Returns (outcome,
        result_json, message); never raises for the robot's failures. report(feedback_json)
        passes on an action's feedback."""


def load_robot_tools(path: str) -> Dict[str, RobotTool]:
    """The tools of a robot_tools_file by name, in the file's order; RobotToolsProblem names
    the file, the tool and the field at fault."""
    data = _parse(path, _read(path))
    if not isinstance(data, dict) or set(data) != {'tools'}:
        raise RobotToolsProblem(f'robot_tools_file {path}: expected one key, tools (a list of '
                                'tools), at the top')
    entries = data['tools']
    if not isinstance(entries, list):
        raise RobotToolsProblem(f'robot_tools_file {path}: tools must be a list')
    if len(entries) > MAX_TOOLS:
        raise RobotToolsProblem(f'robot_tools_file {path}: {len(entries)} tools; at most '
                                f'{MAX_TOOLS} are accepted')
    tools: Dict[str, RobotTool] = {}
    for index, entry in enumerate(entries):
        tool = _tool(entry, f'robot_tools_file {path}', index)
        if tool.name in tools:
            raise RobotToolsProblem(f"robot_tools_file {path}: tool '{tool.name}' is declared "
                                    'twice')
        tools[tool.name] = tool
    return tools


def _read(path: str) -> bytes:
    """The file's bytes: a regular file of at most MAX_FILE_BYTES (checked after opening)."""
    try:
        # Without blocking: a FIFO put there would hold configure until someone writes to it.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise RobotToolsProblem(f'robot_tools_file {path} is not a regular file')
            with os.fdopen(os.dup(descriptor), 'rb') as stream:
                raw = stream.read(MAX_FILE_BYTES + 1)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise RobotToolsProblem(f'robot_tools_file {path} cannot be read: '
                                f'{error.strerror}') from None
    if len(raw) > MAX_FILE_BYTES:
        raise RobotToolsProblem(f'robot_tools_file {path} holds more than the {MAX_FILE_BYTES} '
                                'bytes a tools file may hold')
    return raw


def _parse(path: str, raw: bytes) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise RobotToolsProblem(f'robot_tools_file {path}: not valid YAML: {error}') from None
    except RecursionError:
        raise RobotToolsProblem(f'robot_tools_file {path} is nested too deeply') from None


def _tool(entry: Any, source: str, index: int) -> RobotTool:
    where = f'{source}: tools[{index}]'
    if not isinstance(entry, dict):
        raise RobotToolsProblem(f'{where} must be a mapping of {", ".join(KEYS)}')
    name = entry.get('name')
    if isinstance(name, str) and TOOL_NAME.fullmatch(name):
        where = f"{source}: tool '{name}'"
    else:
        raise RobotToolsProblem(f'{where}: name must be 1..64 letters, digits, "_" or "-" (a '
                                'function name the model calls)')
    unknown = sorted(str(key) for key in entry if key not in KEYS)
    if unknown:
        raise RobotToolsProblem(f"{where}: unknown key(s) {', '.join(unknown)} (known: "
                                f"{', '.join(KEYS)})")
    for key in REQUIRED:
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise RobotToolsProblem(f'{where}: {key} must be a non-empty string')
    description, kind = entry['description'], entry['kind']
    ros_name, interface_type = entry['ros_name'], entry['interface_type']
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise RobotToolsProblem(f'{where}: description has {len(description)} characters; at '
                                f'most {MAX_DESCRIPTION_CHARS} are accepted')
    if kind not in INTERFACE_KIND:
        raise RobotToolsProblem(f"{where}: kind '{kind}' must be service, action or topic")
    if not ROS_NAME.fullmatch(ros_name):
        raise RobotToolsProblem(f"{where}: ros_name '{ros_name}' is not a valid ROS name")
    match = INTERFACE_TYPE.fullmatch(interface_type)
    if not match:
        raise RobotToolsProblem(f"{where}: interface_type '{interface_type}' is not "
                                'package/srv|action|msg/Type')
    if match.group(2) != INTERFACE_KIND[kind]:
        raise RobotToolsProblem(f"{where}: interface_type '{interface_type}' is a "
                                f'{match.group(2)} type; a {kind} tool needs a '
                                f'{INTERFACE_KIND[kind]} type')
    fixed = entry.get('fixed', {})
    if fixed is None:
        fixed = {}
    if not isinstance(fixed, dict) or not all(isinstance(key, str) for key in fixed):
        raise RobotToolsProblem(f'{where}: fixed must be a mapping of field names to values')
    timeout = entry.get('timeout', DEFAULT_TIMEOUT)
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not 0 < timeout <= MAX_TIMEOUT):
        raise RobotToolsProblem(f'{where}: timeout must be a number of seconds in '
                                f'(0, {MAX_TIMEOUT:g}]')
    max_calls = entry.get('max_calls', 0)
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0:
        raise RobotToolsProblem(f'{where}: max_calls must be an integer >= 0 (0: unlimited)')
    return RobotTool(name=name, description=description, kind=kind, ros_name=ros_name,
                     interface_type=interface_type, fixed=dict(fixed), timeout=float(timeout),
                     max_calls=max_calls)


@dataclasses.dataclass(frozen=True)
class RobotToolbox:
    """The node's robot tools ready to offer: each with the JSON Schema of its arguments, and
    the backend that calls them."""

    tools: Mapping[str, RobotTool]
    schemas: Mapping[str, Dict[str, Any]]
    backend: RobotToolBackend

    def offer(self, name: str) -> Dict[str, Any]:
        """The tool as Ollama's function definition."""
        return {'type': 'function',
                'function': {'name': name, 'description': self.tools[name].description,
                             'parameters': self.schemas[name]}}


def robot_toolbox(tools: Mapping[str, RobotTool], backend: RobotToolBackend) -> RobotToolbox:
    """The tools with their arguments' schemas from the backend (at configure: an interface
    that is not installed or cannot be expressed is a RobotToolsProblem naming the tool)."""
    schemas = {}
    for name, tool in tools.items():
        try:
            schema = backend.parameters(tool)
        except Exception as error:  # the backend's reason, whatever it raises
            raise RobotToolsProblem(f"robot tool '{name}' ({tool.interface_type}) cannot be "
                                    f'offered: {error}') from None
        if not isinstance(schema, dict) or schema.get('type') != 'object':
            raise RobotToolsProblem(f"robot tool '{name}': its parameters are not a JSON "
                                    'Schema of type object')
        reason = schema_problem(schema, f"robot tool '{name}': the parameters")
        if reason:
            raise RobotToolsProblem(reason)
        schemas[name] = schema
    return RobotToolbox(dict(tools), schemas, backend)
