"""The node's settings: every parameter written once, as a field of these dataclasses.

Each field's `setting(...)` gives the parameter's default, range or choices, description and
when a change takes effect; core/params.py derives the checks, the ROS declarations
(parameters.py), config/llm.yaml and the README's table from them. `PARAMETERS` lists them all.
"""

import dataclasses
import ipaddress
import os
import re
import shlex
from typing import Any, Dict, FrozenSet, Mapping, Tuple, Type, TypeVar

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
    # Ollama unloads the least recently used model to load one beyond this: with an embedding
    # model and 1, every embed would unload the chat model and every chat reload it.
    max_loaded_models: int = setting(
        1, CONFIGURE, 'OLLAMA_MAX_LOADED_MODELS: models kept in RAM at once (each its own '
        'runner). Raised to 2 when embedding_model is set, so that Ollama never unloads the chat '
        'model to load the embedding model (and back at the next chat).', bounds=(1, 64))
    kv_cache_type: str = setting(
        '', CONFIGURE, "OLLAMA_KV_CACHE_TYPE: KV-cache quantization; q8_0 halves the cache's "
        'RAM at a small quality cost, q4_0 quarters it (both need flash attention); empty = '
        "Ollama's default (f16).", choices=('', 'f16', 'q8_0', 'q4_0'))
    # Words, not true/false: a command line or YAML true would arrive as a bool.
    flash_attention: str = setting(
        'auto', CONFIGURE, "OLLAMA_FLASH_ATTENTION: enabled | disabled; auto = Ollama's "
        'default (the variable unset).', choices=('auto', 'enabled', 'disabled'))
    cpu_cores: str = setting(
        '', CONFIGURE, "The cores the server and its runners may use (CPU affinity), e.g. '2-5' "
        "or '0,2-3'; empty = every core. On the 6-core S100, '2-5' keeps cores 0-1 for the "
        'robot (pin its control loops there).')
    nice: int = setting(
        10, CONFIGURE, 'Scheduling priority (nice) of the server and its runners: higher '
        "yields the CPU sooner to the robot's nodes (nice 0); 0 = normal priority. Cannot be "
        "below the node's own nice.", bounds=(0, 19))
    # Ollama reaches out to ollama.com (sign-in, cloud models) unless OLLAMA_NO_CLOUD is set;
    # a robot offline logs warnings for it and should not depend on it.
    allow_cloud: bool = setting(
        False, CONFIGURE, 'false: a managed server runs with OLLAMA_NO_CLOUD=1 (no Ollama cloud '
        'models or lookups of ollama.com from the robot); true: leave it unset. Pulls '
        '(pull_missing) are not affected.')
    ollama_env: str = setting(
        '', CONFIGURE, 'Further OLLAMA_* variables for the server, as NAME=VALUE words '
        "(shell quoting), e.g. 'OLLAMA_DEBUG=1 OLLAMA_LOAD_TIMEOUT=10m'; the variables the "
        'node sets from its parameters are refused.')

    def validate(self) -> None:
        check_values(self)
        self.cores()
        self.extra_environment()
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

    def cores(self) -> FrozenSet[int]:
        """cpu_cores as core ids (empty: every core); ConfigError for a malformed list or a
        core this machine does not have."""
        return parse_cores(self.cpu_cores, os.cpu_count() or 1)

    def extra_environment(self) -> Dict[str, str]:
        """ollama_env as variables; ConfigError for a malformed word, a name that is not an
        OLLAMA_* variable, or one the node sets itself."""
        return parse_ollama_env(self.ollama_env)


# The server's variables the node sets from its own parameters (or fixes: OLLAMA_KEEP_ALIVE).
NODE_SET_VARIABLES = {
    'OLLAMA_HOST': 'host', 'OLLAMA_MODELS': 'models_dir', 'OLLAMA_NUM_PARALLEL': 'num_parallel',
    'OLLAMA_CONTEXT_LENGTH': 'context_length', 'OLLAMA_MAX_QUEUE': 'max_queue',
    'OLLAMA_MAX_LOADED_MODELS': 'max_loaded_models', 'OLLAMA_KV_CACHE_TYPE': 'kv_cache_type',
    'OLLAMA_FLASH_ATTENTION': 'flash_attention', 'OLLAMA_NO_CLOUD': 'allow_cloud',
    'OLLAMA_KEEP_ALIVE': 'keep_alive_inactive (the node decides when the model is unloaded)'}
_OLLAMA_VARIABLE = re.compile(r'OLLAMA_[A-Z0-9_]+')


def parse_ollama_env(text: str) -> Dict[str, str]:
    """'NAME=VALUE ...' (shell quoting) -> {NAME: VALUE}; ConfigError names the bad word."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise ConfigError(f"ollama_env '{text}' cannot be split into words: {error}") from None
    variables: Dict[str, str] = {}
    for word in words:
        name, equals, value = word.partition('=')
        if not equals:
            raise ConfigError(f"ollama_env: '{word}' is not NAME=VALUE")
        if not _OLLAMA_VARIABLE.fullmatch(name):
            raise ConfigError(f"ollama_env: '{name}' is not an Ollama variable (only OLLAMA_* "
                              'names in capitals are passed to the server)')
        if name in NODE_SET_VARIABLES:
            raise ConfigError(f'ollama_env: {name} is set by the node; use the parameter '
                              f'{NODE_SET_VARIABLES[name]}')
        if '\0' in value:
            raise ConfigError(f'ollama_env: the value of {name} contains a NUL character')
        variables[name] = value
    return variables


def parse_cores(text: str, core_count: int) -> FrozenSet[int]:
    """'2-5', '0,2-3' -> core ids; '' -> empty (every core). ConfigError names what is wrong,
    including cores beyond this machine's core_count.

    The work is bounded by core_count and the text's length, whatever the ranges say: only the
    ids this machine has are built, and a refusal names at most a few offending parts (a
    `ros2 param set` of '0-100000000' must not build a hundred million ids).
    """
    shown = _shortened(text)
    cores = set()
    beyond = []    # the offending part of each piece naming cores this machine lacks
    for part in filter(None, (piece.strip() for piece in text.split(','))):
        # Nine digits is beyond any machine's core count, and int() of a longer digit string
        # could cost (or, above 4300 digits, refuse) more than this check is worth.
        match = re.fullmatch(r'(\d{1,9})(?:\s*-\s*(\d{1,9}))?', part)
        if not match:
            raise ConfigError(f"cpu_cores '{shown}': '{_shortened(part)}' is not a core id or "
                              "range (write e.g. '2-5' or '0,2-3')")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if last < first:
            raise ConfigError(f"cpu_cores '{shown}': the range '{_shortened(part)}' runs "
                              'backwards')
        if last >= core_count:
            low = max(first, core_count)
            beyond.append(str(low) if low == last else f'{low}-{last}')
        cores.update(range(first, min(last, core_count - 1) + 1))
    if beyond:
        named = ', '.join(beyond[:_NAMED_PARTS]) + (
            f' and {len(beyond) - _NAMED_PARTS} more' if len(beyond) > _NAMED_PARTS else '')
        raise ConfigError(f"cpu_cores '{shown}': core(s) {named} do not exist (this machine "
                          f'has {core_count} cores: 0-{core_count - 1})')
    return frozenset(cores)


# A refusal names this many offending parts of cpu_cores at most, and this much of its text.
_NAMED_PARTS = 3
_SHOWN_CHARS = 60


def _shortened(text: str) -> str:
    """text as a reason quotes it: cut with '...' beyond _SHOWN_CHARS characters."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + '...'


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Which model is served and how it is loaded."""

    model: str = setting(
        'deepseek-r1:1.5b', ACTIVATE, 'The Ollama model to serve, e.g. deepseek-r1:1.5b.')
    pull_missing: bool = setting(
        True, ACTIVATE, 'Pull the model on activate when it is not in models_dir.')
    model_source: str = setting(
        '', ACTIVATE, 'Local weights to create the model from instead of pulling it (no '
        'network): a GGUF file, a safetensors model directory (config.json + *.safetensors) or '
        'a Modelfile (FROM a path relative to it, TEMPLATE, SYSTEM, PARAMETER). Imported on '
        'activate when the model is missing from models_dir or was created from other '
        "content; '' = none.")
    model_quantize: str = setting(
        '', ACTIVATE, 'Quantize model_source while importing it, e.g. q4_K_M or q8_0 (Ollama '
        "quantizes F16, BF16 and F32 weights only, and refuses otherwise); '' = keep the "
        "source's type.")
    load_timeout: float = setting(
        300.0, ACTIVATE, 'Seconds a pull step or a model load may take.', bounds=(1.0, 86400.0))
    memory_margin_mb: int = setting(
        1024, ACTIVATE, 'RAM that must stay available after the model is loaded; activation '
        'is refused otherwise.', bounds=(0, 1 << 20))
    keep_alive_inactive: float = setting(
        0.0, ACTIVATE, 'Seconds the model stays loaded after deactivate (0: unload at once).',
        bounds=(0.0, 86400.0))
    # Never 0 to Ollama: its runner would take one thread per performance core, blind to the
    # node's affinity and a container's quota (core/threads.py resolves 0).
    num_thread: int = setting(
        0, ACTIVATE, "Ollama's num_thread: threads the model computes with, sent with the load "
        'and every chat. 0 = automatic: the cores the model may use (cpu_cores, else the '
        "node's CPU affinity, fewer under a cgroup CPU quota), at most 4 (on the S100: 4 of "
        'its 6 cores, 2 left to the robot); the log and diagnostics say what was chosen and '
        'why. More threads than usable cores stall the model (warned about).',
        bounds=(0, 256))

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
        20, ACTIVATE, 'Turns a session keeps at most; beyond it the oldest are dropped in one '
        'block, down to half, so that the history Ollama has cached changes rarely.',
        bounds=(1, 10000))
    max_sessions: int = setting(
        64, ACTIVATE, 'Sessions kept; the least recently used is dropped beyond this.',
        bounds=(1, 100000))
    stream_timeout: float = setting(
        120.0, ACTIVATE, 'Seconds without output from Ollama before a chat is aborted.',
        bounds=(1.0, 3600.0))
    sessions_file: str = setting(
        '', CONFIGURE, 'A file that keeps the sessions across restarts (JSON, written '
        'atomically after each completed turn, loaded at configure; a corrupt one is moved '
        'aside), e.g. ~/.ros/llm_sessions.json; empty = sessions in memory only.')
    robot_tools_file: str = setting(
        '', CONFIGURE, "The robot's services, actions and topics a goal's robot_tools may use "
        '(YAML; see docs/robot-tools.md), read at configure: a file with a problem fails '
        'configure with the reason; empty = no robot tools.')
    max_tool_steps: int = setting(
        5, ACTIVATE, 'Model turns a goal with robot_tools may take, its answer included; a '
        'model still calling tools in the last one ends the goal with TOOL_STEPS (those calls '
        'not executed).', bounds=(1, 100))

    def validate(self) -> None:
        check_values(self)


@dataclasses.dataclass(frozen=True)
class VisionSettings:
    """Images in chat goals and the camera a goal can ask to see (use_camera)."""

    camera_topic: str = setting(
        '', ACTIVATE, 'Image topic a goal with use_camera sees (subscribed while active, best '
        'effort, latest frame kept): sensor_msgs/Image, or sensor_msgs/CompressedImage when '
        "the name ends with '/compressed' (image_transport's convention); empty = no camera.")
    camera_max_age: float = setting(
        1.0, ACTIVATE, 'Seconds since its receipt (on the node) after which the latest camera '
        'frame is too old for a goal (NO_IMAGE).', bounds=(0.01, 3600.0))
    image_max_side: int = setting(
        1024, ACTIVATE, 'Images are downscaled (aspect kept) so that their longest side is at '
        'most this many pixels before they are sent; smaller compressed ones pass unchanged.',
        bounds=(16, 8192))
    max_images: int = setting(
        4, ACTIVATE, 'Most images one goal may carry (images + compressed_images + camera).',
        bounds=(1, 64))
    max_image_bytes: int = setting(
        8_000_000, ACTIVATE, 'Largest image accepted, in bytes of its data (a raw 1920x1080 '
        'rgb8 frame has 6.2 MB).', bounds=(1024, 100_000_000))

    def validate(self) -> None:
        check_values(self)
        if self.camera_topic and not _TOPIC.fullmatch(self.camera_topic):
            raise ConfigError(f"camera_topic '{self.camera_topic}' is not a valid topic name")


# A ROS topic name (absolute, relative or ~/private): tokens of letters, digits and '_'.
_TOPIC = re.compile(r'(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*')


@dataclasses.dataclass(frozen=True)
class EmbeddingSettings:
    """The embedding model and the limits of the ~/embed service."""

    # At configure: the server is started with room for both models (max_loaded_models).
    embedding_model: str = setting(
        '', CONFIGURE, 'The Ollama embedding model (capability "embedding", e.g. '
        'nomic-embed-text, all-minilm) served on ~/embed, loaded at activate next to model and '
        'kept loaded while active; empty = no embedding service. The server is started with room '
        'for both models (see max_loaded_models), so a change takes effect at the next '
        'configure.')
    max_embed_texts: int = setting(
        64, ACTIVATE, 'Most texts one embed request may hold.', bounds=(1, 100000))
    max_embed_chars: int = setting(
        100000, ACTIVATE, 'Most characters one embed request may hold, all texts together.',
        bounds=(1, 10_000_000))

    def validate(self) -> None:
        check_values(self)
        if self.embedding_model:
            validate_model_name(self.embedding_model, 'embedding_model')


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
    """Everything the node is set up with: one settings object per concern."""

    server: ServerSettings
    model: ModelSettings
    supervision: SupervisionSettings
    chat: ChatSettings
    vision: VisionSettings
    embedding: EmbeddingSettings
    diagnostics: DiagnosticsSettings

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
    ('Images and the camera', VisionSettings),
    ('Embeddings (~/embed)', EmbeddingSettings),
    ('Diagnostics on /diagnostics', DiagnosticsSettings),
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
        vision=part(VisionSettings), embedding=part(EmbeddingSettings),
        diagnostics=part(DiagnosticsSettings))
    settings.validate()
    return settings


def expand_models_dir(value: str) -> str:
    """The models_dir parameter as an absolute path (Ollama's default when empty)."""
    return os.path.abspath(os.path.expanduser(value or '~/.ollama/models'))
