"""The node's ROS parameters: declared with descriptors, turned into the core's settings.

Every field of the core's settings dataclasses is one parameter of the same name (the
diagnostics period is `diagnostics_period`). Values are checked when they are set, so a bad
`ros2 param set` is refused with the reason. When a value takes effect ends its description:
server settings at the next configure, model and chat settings at the next activate,
supervision and diagnostics thresholds at once, the rest (read-only) at start.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple, Type

from rcl_interfaces.msg import FloatingPointRange
from rcl_interfaces.msg import IntegerRange
from rcl_interfaces.msg import ParameterDescriptor
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from .core.config import ChatSettings
from .core.config import ConfigError
from .core.config import DiagnosticsSettings
from .core.config import ModelSettings
from .core.config import parameter_name
from .core.config import RANGES
from .core.config import ServerSettings
from .core.config import SupervisionSettings

DESCRIPTIONS = {
    'host': 'Ollama address host:port. A managed server binds it; loopback only unless '
            'allow_remote. Next configure.',
    'ollama_bin': 'The ollama executable (name on PATH or path). Next configure.',
    'models_dir': "OLLAMA_MODELS: where models are stored; empty = Ollama's default "
                  '(~/.ollama/models). Put it on a large partition. Next configure.',
    'manage_server': 'true: spawn and own `ollama serve`; false: use a server someone else runs. '
                     'Next configure.',
    'adopt_existing': 'When a server already answers on host: true = use it (and leave it '
                      'running at cleanup), false = fail configure. Next configure.',
    'allow_remote': 'Allow a managed server to listen on a non-loopback address. Next configure.',
    'start_timeout': 'Seconds for the server to answer HTTP after it was spawned. Next configure.',
    'stop_timeout': 'Seconds between SIGTERM and SIGKILL of the server process group. Next '
                    'configure.',
    'num_parallel': 'OLLAMA_NUM_PARALLEL: chats generated at once (each costs KV-cache RAM). '
                    'Set at start.',
    'context_length': 'OLLAMA_CONTEXT_LENGTH: context window in tokens (RAM grows with it). '
                      'Next configure.',
    'max_queue': 'OLLAMA_MAX_QUEUE: requests Ollama itself queues. Next configure.',
    'model': 'The Ollama model to serve, e.g. deepseek-r1:1.5b. Next activate.',
    'pull_missing': 'Pull the model on activate when it is not in models_dir. Next activate.',
    'load_timeout': 'Seconds a pull step or a model load may take. Next activate.',
    'memory_margin_mb': 'RAM that must stay available after the model is loaded; activation '
                        'is refused otherwise. Next activate.',
    'keep_alive_inactive': 'Seconds the model stays loaded after deactivate (0: unload at once). '
                           'Next activate.',
    'restart_on_failure': 'Restart a server that died or hangs while configured (and reload the '
                          'model). At once.',
    'max_restarts': 'Server restarts allowed within restart_window; one more failure -> '
                    'ErrorProcessing. At once.',
    'restart_window': 'Seconds over which restarts are counted. At once.',
    'restart_backoff': 'Seconds before the first restart; doubled for each further one. At once.',
    'max_prompt_chars': 'Longest prompt + system prompt + context accepted, in characters. '
                        'Next activate.',
    'max_tokens_limit': 'Most tokens one chat may generate (also the default when a goal '
                        'sets max_tokens 0). Next activate.',
    'concurrency': 'A goal arriving while num_parallel chats run: reject | queue | preempt '
                   '(cancel the oldest). Next activate.',
    'max_queued_goals': 'Goals that may wait with concurrency=queue. Set at start.',
    'feedback_min_interval': 'At most one feedback message per this many seconds: faster '
                             'chunks are joined, none dropped or delayed longer (0: one message '
                             'per streamed chunk). Next activate.',
    'session_max_turns': 'Turns a session keeps (older ones are dropped). Next activate.',
    'max_sessions': 'Sessions kept; the least recently used is dropped beyond this. Next '
                    'activate.',
    'stream_timeout': 'Seconds without output from Ollama before a chat is aborted. Next '
                      'activate.',
    'diagnostics_period': 'Seconds between /diagnostics messages. Set at start.',
    'cpu_warn_percent': 'System CPU usage that turns the CPU status WARN. At once.',
    'cpu_error_percent': 'System CPU usage that turns the CPU status ERROR. At once.',
    'memory_warn_percent': 'RAM in use (of total) that turns the memory status WARN. At once.',
    'memory_error_percent': 'RAM in use (of total) that turns the memory status ERROR. At '
                            'once.',
    'temperature_warn_c': 'Hottest sensor temperature that turns WARN (the S100 throttles at '
                          '95). At once.',
    'temperature_error_c': 'Hottest sensor temperature that turns ERROR. At once.',
    'disk_warn_mb': 'Free MB where models_dir lives below which storage is WARN. At once.',
    'disk_error_mb': 'Free MB where models_dir lives below which storage is ERROR. At once.',
    'tts_bridge': 'Bridge /prompt_text (std_msgs/String) to the chat and publish the answer '
                  'on /tts_text sentence by sentence (D-Robotics speech chain). Set at start.',
}
# The executor's thread count is sized from num_parallel and max_queued_goals at start.
READ_ONLY = {'diagnostics_period', 'tts_bridge', 'num_parallel', 'max_queued_goals'}
SETTINGS_CLASSES: Tuple[Type[Any], ...] = (ServerSettings, ModelSettings, SupervisionSettings,
                                           ChatSettings, DiagnosticsSettings)


@dataclasses.dataclass(frozen=True)
class NodeSettings:
    server: ServerSettings
    model: ModelSettings
    supervision: SupervisionSettings
    chat: ChatSettings
    diagnostics: DiagnosticsSettings
    tts_bridge: bool

    @property
    def models_dir(self) -> str:
        """OLLAMA_MODELS as the server will use it (Ollama's default when empty)."""
        return expand_models_dir(self.server.models_dir)


def expand_models_dir(value: str) -> str:
    """The models_dir parameter as an absolute path (Ollama's default when empty)."""
    return os.path.abspath(os.path.expanduser(value or '~/.ollama/models'))


def names() -> List[str]:
    return [parameter_name(settings_class, field.name) for settings_class in SETTINGS_CLASSES
            for field in dataclasses.fields(settings_class)] + ['tts_bridge']


def declare(node: Node) -> None:
    """Declare every parameter with its default and descriptor."""
    for settings_class in SETTINGS_CLASSES:
        for field in dataclasses.fields(settings_class):
            name = parameter_name(settings_class, field.name)
            node.declare_parameter(name, field.default, _descriptor(name, field.default))
    node.declare_parameter('tts_bridge', False, _descriptor('tts_bridge', False))


def _descriptor(name: str, default: Any) -> ParameterDescriptor:
    """The description, read-only flag and range (from core.config.RANGES) of a parameter.

    A float parameter is declared with dynamic typing so that it also takes an integer, at
    startup (`-p start_timeout:=5`, a YAML `95`) and from `ros2 param set` (which sends `95` as
    an integer): rclpy refuses a statically typed double parameter an integer ("Wrong
    parameter type"), and a pre-set callback that could convert it exists only from Iron on
    and is not run for startup overrides. The node's own validation (core.config) checks the
    type and range of every value instead, and read() turns integers into floats.
    """
    descriptor = ParameterDescriptor(description=DESCRIPTIONS[name], read_only=name in READ_ONLY)
    if name in RANGES:
        low, high = RANGES[name]
        if isinstance(default, float):
            descriptor.dynamic_typing = True
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                                  to_value=float(high))]
        else:
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high))]
    return descriptor


def read(node: Node, overrides: Optional[Dict[str, Any]] = None) -> NodeSettings:
    """Build and validate the settings from the parameters (with overrides); ConfigError."""
    values = {name: node.get_parameter(name).value for name in names()}
    values.update(overrides or {})
    built: List[Any] = []
    for settings_class in SETTINGS_CLASSES:
        kwargs = {field.name: _as_declared(field, values[parameter_name(settings_class,
                                                                        field.name)])
                  for field in dataclasses.fields(settings_class)}
        settings = settings_class(**kwargs)
        settings.validate()
        built.append(settings)
    return NodeSettings(*built, tts_bridge=bool(values['tts_bridge']))


def _as_declared(field: 'dataclasses.Field[Any]', value: Any) -> Any:
    """An integer given for a float setting, as a float (anything else is validated as is)."""
    if isinstance(field.default, float) and isinstance(value, int) \
            and not isinstance(value, bool):
        return float(value)
    return value


def validate_change(node: Node, parameters: List[Parameter]) -> SetParametersResult:
    """on_set_parameters callback: refuse a value that would make the settings invalid."""
    try:
        read(node, {p.name: p.value for p in parameters})
    except ConfigError as error:
        return SetParametersResult(successful=False, reason=str(error))
    return SetParametersResult(successful=True)
