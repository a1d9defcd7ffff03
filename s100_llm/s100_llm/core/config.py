"""The node's settings: every parameter written once, as a field of these dataclasses.

Each field's `setting(...)` gives the parameter's default, range or choices, description and
when a change takes effect; core/params.py derives the checks, the ROS declarations
(parameters.py), config/llm.yaml and the README's table from them. `PARAMETERS` lists them all.
"""

import dataclasses
import ipaddress
import os
import re
from typing import Any, Mapping, Tuple, Type, TypeVar

from .params import check_values
from .params import ConfigError
from .params import Parameter
from .params import setting
from .params import table
from .params import TakesEffect

SettingsT = TypeVar('SettingsT')

DEFAULT_PORT = 11434
# What Ollama accepts as a model reference: [host/][namespace/]model[:tag].
_MODEL_NAME = re.compile(
    r'^(?:[A-Za-z0-9.-]+(?::\d+)?/)?(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,79}/)?'
    r'[A-Za-z0-9][A-Za-z0-9_.-]{0,79}(?::[A-Za-z0-9][A-Za-z0-9_.-]{0,79})?$')


def validate_model_name(name: str, parameter: str = 'model') -> str:
    if not _MODEL_NAME.match(name) or '..' in name:
        raise ConfigError(f"{parameter} '{name}' is not a valid Ollama model name "
                          '(expected [namespace/]name[:tag], e.g. deepseek-r1:1.5b)')
    return name


def parse_host(value: str) -> Tuple[str, int]:
    """'127.0.0.1:11434', 'localhost', '[::1]:11434', 'http://host:port' -> (host, port)."""
    text = value.strip()
    for scheme in ('http://', 'https://'):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip('/')
    match = re.fullmatch(r'\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:/\[\]]*)(?::(\d+))?', text)
    if not match:
        raise ConfigError(f"host '{value}' is not host[:port]")
    host = match.group(1) or match.group(3) or ''
    port_text = match.group(2) or match.group(4)
    if not host:
        raise ConfigError(f"host '{value}' has no host name; write 0.0.0.0:PORT to bind all "
                          'interfaces (and set allow_remote to true)')
    port = int(port_text) if port_text else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ConfigError(f"host '{value}': port {port} is out of range 1..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Short names for the settings below.
CONFIGURE, ACTIVATE, AT_ONCE, START = (TakesEffect.CONFIGURE, TakesEffect.ACTIVATE,
                                       TakesEffect.AT_ONCE, TakesEffect.START)


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """How the Ollama server is found or started."""

    host: str = setting(
        '127.0.0.1:11434', CONFIGURE,
        'Ollama address host:port. A managed server binds it; loopback only unless allow_remote.')
    ollama_bin: str = setting(
        'ollama', CONFIGURE, 'The ollama executable (name on PATH or path).')
    models_dir: str = setting(
        '', CONFIGURE, "OLLAMA_MODELS: where models are stored; empty = Ollama's default "
        '(~/.ollama/models). Put it on a large partition.')
    manage_server: bool = setting(
        True, CONFIGURE,
        'true: spawn and own `ollama serve`; false: use a server someone else runs.')
    adopt_existing: bool = setting(
        False, CONFIGURE, 'When a server already answers on host: true = use it (and leave it '
        'running at cleanup), false = fail configure.')
    allow_remote: bool = setting(
        False, CONFIGURE, 'Allow a managed server to listen on a non-loopback address.')
    start_timeout: float = setting(
        30.0, CONFIGURE, 'Seconds for the server to answer HTTP after it was spawned.',
        bounds=(0.1, 3600.0))
    stop_timeout: float = setting(
        5.0, CONFIGURE, 'Seconds between SIGTERM and SIGKILL of the server process group.',
        bounds=(0.1, 600.0))
    # Read-only: the executor's thread count is sized from it at start.
    num_parallel: int = setting(
        1, START, 'OLLAMA_NUM_PARALLEL: chats generated at once (each costs KV-cache RAM).',
        bounds=(1, 64))
    context_length: int = setting(
        4096, CONFIGURE, 'OLLAMA_CONTEXT_LENGTH: context window in tokens (RAM grows with it).',
        bounds=(256, 1 << 20))
    max_queue: int = setting(
        64, CONFIGURE, 'OLLAMA_MAX_QUEUE: requests Ollama itself queues.', bounds=(1, 100000))

    def validate(self) -> None:
        check_values(self)
        host, _ = parse_host(self.host)
        if self.manage_server and not self.allow_remote and not is_loopback(host):
            raise ConfigError(f"host '{self.host}' is not a loopback address: a managed server "
                              'would listen on the network; set allow_remote to true to allow it')
        if not self.ollama_bin.strip():
            raise ConfigError('ollama_bin is empty')

    @property
    def base_url(self) -> str:
        host, port = parse_host(self.host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Which model is served and how it is loaded."""

    model: str = setting(
        'deepseek-r1:1.5b', ACTIVATE, 'The Ollama model to serve, e.g. deepseek-r1:1.5b.')
    pull_missing: bool = setting(
        True, ACTIVATE, 'Pull the model on activate when it is not in models_dir.')
    load_timeout: float = setting(
        300.0, ACTIVATE, 'Seconds a pull step or a model load may take.', bounds=(1.0, 86400.0))
    memory_margin_mb: int = setting(
        1024, ACTIVATE, 'RAM that must stay available after the model is loaded; activation '
        'is refused otherwise.', bounds=(0, 1 << 20))
    keep_alive_inactive: float = setting(
        0.0, ACTIVATE, 'Seconds the model stays loaded after deactivate (0: unload at once).',
        bounds=(0.0, 86400.0))

    def validate(self) -> None:
        check_values(self)
        validate_model_name(self.model)


@dataclasses.dataclass(frozen=True)
class SupervisionSettings:
    """What happens when the server or runner dies while configured."""

    restart_on_failure: bool = setting(
        True, AT_ONCE, 'Restart a server that died or hangs while configured (and reload the '
        'model).')
    max_restarts: int = setting(
        3, AT_ONCE, 'Server restarts allowed within restart_window; one more failure -> '
        'ErrorProcessing.', bounds=(0, 1000))
    restart_window: float = setting(
        300.0, AT_ONCE, 'Seconds over which restarts are counted.', bounds=(1.0, 86400.0))
    restart_backoff: float = setting(
        1.0, AT_ONCE, 'Seconds before the first restart; doubled for each further one.',
        bounds=(0.0, 600.0))

    def validate(self) -> None:
        check_values(self)


@dataclasses.dataclass(frozen=True)
class ChatSettings:
    """Limits and policies of the chat action."""

    max_prompt_chars: int = setting(
        32000, ACTIVATE, 'Longest prompt + system prompt + context accepted, in characters.',
        bounds=(1, 10_000_000))
    max_tokens_limit: int = setting(
        8192, ACTIVATE, 'Most tokens one chat may generate (also the default when a goal sets '
        'max_tokens 0).', bounds=(1, 1 << 20))
    concurrency: str = setting(
        'queue', ACTIVATE, 'A goal arriving while num_parallel chats run: reject | queue | '
        'preempt (cancel the oldest).', choices=('reject', 'queue', 'preempt'))
    max_queued_goals: int = setting(
        8, ACTIVATE, 'Goals that may wait with concurrency=queue.', bounds=(0, 1000))
    # 10 ms keeps a Python client's queue from overflowing at hundreds of chunks/s; slower
    # models (every CPU model on the S100) are unaffected: a token after a quiet interval goes
    # out at once.
    feedback_min_interval: float = setting(
        0.01, ACTIVATE, 'At most one feedback message per this many seconds: faster chunks are '
        'joined, none dropped or delayed longer (0: one message per streamed chunk).',
        bounds=(0.0, 10.0))
    session_max_turns: int = setting(
        20, ACTIVATE, 'Turns a session keeps (older ones are dropped).', bounds=(1, 10000))
    max_sessions: int = setting(
        64, ACTIVATE, 'Sessions kept; the least recently used is dropped beyond this.',
        bounds=(1, 100000))
    stream_timeout: float = setting(
        120.0, ACTIVATE, 'Seconds without output from Ollama before a chat is aborted.',
        bounds=(1.0, 3600.0))

    def validate(self) -> None:
        check_values(self)


@dataclasses.dataclass(frozen=True)
class DiagnosticsSettings:
    """Thresholds of the diagnostics statuses (WARN at *_warn, ERROR at *_error)."""

    period: float = setting(
        1.0, START, 'Seconds between /diagnostics messages.', bounds=(0.1, 60.0),
        name='diagnostics_period')
    cpu_warn_percent: float = setting(
        90.0, AT_ONCE, 'System CPU usage that turns the CPU status WARN.', bounds=(0.0, 100.0))
    cpu_error_percent: float = setting(
        98.0, AT_ONCE, 'System CPU usage that turns the CPU status ERROR.', bounds=(0.0, 100.0))
    memory_warn_percent: float = setting(
        90.0, AT_ONCE, 'RAM in use (of total) that turns the memory status WARN.',
        bounds=(0.0, 100.0))
    memory_error_percent: float = setting(
        95.0, AT_ONCE, 'RAM in use (of total) that turns the memory status ERROR.',
        bounds=(0.0, 100.0))
    temperature_warn_c: float = setting(
        85.0, AT_ONCE, 'Hottest sensor temperature that turns WARN (the S100 throttles at 95).',
        bounds=(-50.0, 200.0))
    temperature_error_c: float = setting(
        95.0, AT_ONCE, 'Hottest sensor temperature that turns ERROR.', bounds=(-50.0, 200.0))
    disk_warn_mb: float = setting(
        2048.0, AT_ONCE, 'Free MB where models_dir lives below which storage is WARN.',
        bounds=(0.0, 1e9))
    disk_error_mb: float = setting(
        512.0, AT_ONCE, 'Free MB where models_dir lives below which storage is ERROR.',
        bounds=(0.0, 1e9))

    def validate(self) -> None:
        check_values(self)
        for name in ('cpu', 'memory', 'temperature'):
            warn = getattr(self, f'{name}_warn_' + ('c' if name == 'temperature' else 'percent'))
            error = getattr(self, f'{name}_error_' + ('c' if name == 'temperature' else 'percent'))
            if warn > error:
                raise ConfigError(f'{name} thresholds: warn ({warn:g}) must not exceed error '
                                  f'({error:g})')
        if self.disk_error_mb > self.disk_warn_mb:
            raise ConfigError('disk_error_mb must not exceed disk_warn_mb')


@dataclasses.dataclass(frozen=True)
class NodeSettings:
    """Everything the node is set up with: one settings object per concern, and the bridges."""

    server: ServerSettings
    model: ModelSettings
    supervision: SupervisionSettings
    chat: ChatSettings
    diagnostics: DiagnosticsSettings
    tts_bridge: bool = setting(
        False, START, 'Bridge /prompt_text (std_msgs/String) to the chat and publish the answer '
        'on /tts_text sentence by sentence (D-Robotics speech chain).')

    def validate(self) -> None:
        check_values(self)

    @property
    def models_dir(self) -> str:
        """OLLAMA_MODELS as the server will use it (Ollama's default when empty)."""
        return expand_models_dir(self.server.models_dir)


# Every parameter, in the order llm.yaml and the README list them.
PARAMETERS: Tuple[Parameter, ...] = table(
    ('The Ollama server', ServerSettings),
    ('The model', ModelSettings),
    ('When the server or its runner dies', SupervisionSettings),
    ('The chat action', ChatSettings),
    ('Diagnostics on /diagnostics', DiagnosticsSettings),
    ('Integration', NodeSettings),
)
# The allowed range (inclusive) of every numeric parameter, by name.
RANGES = {parameter.name: parameter.bounds for parameter in PARAMETERS
          if parameter.bounds is not None}


def parameter_name(settings_class: type, field: str) -> str:
    """The parameter a settings field is set by (the diagnostics period is renamed)."""
    return next(parameter.name for parameter in PARAMETERS
                if (parameter.owner, parameter.field) == (settings_class, field))


def settings_part(owner: Type[SettingsT], values: Mapping[str, Any]) -> SettingsT:
    """One settings class from its parameters' values by name, validated (ConfigError)."""
    settings = owner(**{parameter.field: parameter.as_declared(values[parameter.name])
                        for parameter in PARAMETERS if parameter.owner is owner})
    settings.validate()  # type: ignore[attr-defined]
    return settings


def settings_from(values: Mapping[str, Any]) -> NodeSettings:
    """NodeSettings from every parameter's value by name, validated; ConfigError names the
    first invalid one."""
    def part(owner: Type[SettingsT]) -> SettingsT:
        return settings_part(owner, values)

    settings = NodeSettings(
        server=part(ServerSettings), model=part(ModelSettings),
        supervision=part(SupervisionSettings), chat=part(ChatSettings),
        diagnostics=part(DiagnosticsSettings), tts_bridge=values['tts_bridge'])
    settings.validate()
    return settings


def expand_models_dir(value: str) -> str:
    """The models_dir parameter as an absolute path (Ollama's default when empty)."""
    return os.path.abspath(os.path.expanduser(value or '~/.ollama/models'))
