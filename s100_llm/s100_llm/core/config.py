"""Typed settings of the node, validated in one place for the node and its tests."""

import dataclasses
import ipaddress
import math
import re
from typing import Any, Dict, Tuple

DEFAULT_PORT = 11434
# What Ollama accepts as a model reference: [host/][namespace/]model[:tag].
_MODEL_NAME = re.compile(
    r'^(?:[A-Za-z0-9.-]+(?::\d+)?/)?(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,79}/)?'
    r'[A-Za-z0-9][A-Za-z0-9_.-]{0,79}(?::[A-Za-z0-9][A-Za-z0-9_.-]{0,79})?$')
CONCURRENCY_POLICIES = ('reject', 'queue', 'preempt')
# The one table of allowed ranges (inclusive) of every numeric setting, by parameter name: the
# validation below and the parameter descriptors (`ros2 param describe`) both read it. NaN and
# infinities are outside every range.
RANGES: Dict[str, Tuple[float, float]] = {
    'start_timeout': (0.1, 3600.0), 'stop_timeout': (0.1, 600.0), 'num_parallel': (1, 64),
    'context_length': (256, 1 << 20), 'max_queue': (1, 100000), 'load_timeout': (1.0, 86400.0),
    'memory_margin_mb': (0, 1 << 20), 'keep_alive_inactive': (0.0, 86400.0),
    'max_restarts': (0, 1000), 'restart_window': (1.0, 86400.0), 'restart_backoff': (0.0, 600.0),
    'max_prompt_chars': (1, 10_000_000), 'max_tokens_limit': (1, 1 << 20),
    'max_queued_goals': (0, 1000), 'feedback_min_interval': (0.0, 10.0),
    'session_max_turns': (1, 10000), 'max_sessions': (1, 100000),
    'stream_timeout': (1.0, 3600.0), 'diagnostics_period': (0.1, 60.0),
    'cpu_warn_percent': (0.0, 100.0), 'cpu_error_percent': (0.0, 100.0),
    'memory_warn_percent': (0.0, 100.0), 'memory_error_percent': (0.0, 100.0),
    'temperature_warn_c': (-50.0, 200.0), 'temperature_error_c': (-50.0, 200.0),
    'disk_warn_mb': (0.0, 1e9), 'disk_error_mb': (0.0, 1e9),
}


class ConfigError(ValueError):
    """A setting is invalid; the message names the parameter and what is wrong."""


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


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """How the Ollama server is found or started."""

    host: str = '127.0.0.1:11434'
    ollama_bin: str = 'ollama'
    models_dir: str = ''                  # OLLAMA_MODELS; empty = Ollama's default
    manage_server: bool = True            # spawn and own `ollama serve`
    adopt_existing: bool = False          # use a server that already answers on host
    allow_remote: bool = False            # let a managed server bind a non-loopback address
    start_timeout: float = 30.0           # s until the server answers HTTP
    stop_timeout: float = 5.0             # s between SIGTERM and SIGKILL of the process group
    num_parallel: int = 1                 # OLLAMA_NUM_PARALLEL
    context_length: int = 4096            # OLLAMA_CONTEXT_LENGTH
    max_queue: int = 64                   # OLLAMA_MAX_QUEUE

    def validate(self) -> None:
        host, _ = parse_host(self.host)
        if self.manage_server and not self.allow_remote and not is_loopback(host):
            raise ConfigError(f"host '{self.host}' is not a loopback address: a managed server "
                              'would listen on the network; set allow_remote to true to allow it')
        if not self.ollama_bin.strip():
            raise ConfigError('ollama_bin is empty')
        check_numbers(self)

    @property
    def base_url(self) -> str:
        host, port = parse_host(self.host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Which model is served and how it is loaded."""

    model: str = 'deepseek-r1:1.5b'
    pull_missing: bool = True
    load_timeout: float = 300.0           # s for a pull step or a load to answer
    memory_margin_mb: int = 1024          # RAM left free after loading
    keep_alive_inactive: float = 0.0      # s the model stays loaded after deactivate (0: unload)

    def validate(self) -> None:
        validate_model_name(self.model)
        check_numbers(self)


@dataclasses.dataclass(frozen=True)
class SupervisionSettings:
    """What happens when the server or runner dies while configured."""

    restart_on_failure: bool = True
    max_restarts: int = 3                 # within restart_window; then ErrorProcessing
    restart_window: float = 300.0         # s
    restart_backoff: float = 1.0          # s before the first restart, doubled each time

    def validate(self) -> None:
        check_numbers(self)


@dataclasses.dataclass(frozen=True)
class ChatSettings:
    """Limits and policies of the chat action."""

    max_prompt_chars: int = 32000
    max_tokens_limit: int = 8192
    concurrency: str = 'queue'            # reject | queue | preempt
    max_queued_goals: int = 8
    # At most one feedback message per this many seconds (0: one per chunk). 10 ms keeps a
    # Python client's queue from overflowing at hundreds of chunks/s; slower models (every CPU
    # model on the S100) are unaffected: a token after a quiet interval goes out at once.
    feedback_min_interval: float = 0.01
    session_max_turns: int = 20
    max_sessions: int = 64
    stream_timeout: float = 120.0         # s without a chunk before the chat is aborted

    def validate(self) -> None:
        if self.concurrency not in CONCURRENCY_POLICIES:
            raise ConfigError(f"concurrency '{self.concurrency}' must be one of "
                              f"{', '.join(CONCURRENCY_POLICIES)}")
        check_numbers(self)


def parameter_name(settings_class: type, field: str) -> str:
    """The parameter a settings field is set by (the diagnostics period is renamed)."""
    return 'diagnostics_period' if (settings_class, field) == (DiagnosticsSettings, 'period') \
        else field


def check_numbers(settings: Any) -> None:
    """Every numeric field is a number of its type, finite, within its RANGES entry.

    A float setting also takes an integer (`ros2 param set /llm cpu_warn_percent 95`).
    """
    for field in dataclasses.fields(settings):
        name = parameter_name(type(settings), field.name)
        if name not in RANGES:
            continue
        value = getattr(settings, field.name)
        integer = isinstance(field.default, int)
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise ConfigError(f"{name} must be {'an integer' if integer else 'a number'} "
                              f'(got {value!r})')
        low, high = RANGES[name]
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f'{name} must be in {low:g}..{high:g} (got {value:g})')


@dataclasses.dataclass(frozen=True)
class DiagnosticsSettings:
    """Thresholds of the diagnostics statuses (WARN at *_warn, ERROR at *_error)."""

    period: float = 1.0
    cpu_warn_percent: float = 90.0
    cpu_error_percent: float = 98.0
    memory_warn_percent: float = 90.0
    memory_error_percent: float = 95.0
    temperature_warn_c: float = 85.0
    temperature_error_c: float = 95.0
    disk_warn_mb: float = 2048.0
    disk_error_mb: float = 512.0

    def validate(self) -> None:
        check_numbers(self)
        for name in ('cpu', 'memory', 'temperature'):
            warn = getattr(self, f'{name}_warn_' + ('c' if name == 'temperature' else 'percent'))
            error = getattr(self, f'{name}_error_' + ('c' if name == 'temperature' else 'percent'))
            if warn > error:
                raise ConfigError(f'{name} thresholds: warn ({warn:g}) must not exceed error '
                                  f'({error:g})')
        if self.disk_error_mb > self.disk_warn_mb:
            raise ConfigError('disk_error_mb must not exceed disk_warn_mb')
