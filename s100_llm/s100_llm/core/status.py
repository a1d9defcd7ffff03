"""The seven health statuses as pure functions: figures in, a level, a message and values out.

System CPU, Memory, Temperature and Storage are a function of one SystemSample and the
thresholds; Ollama server, Model and Embedding model of the ServingState snapshot, what the one
/api/ps call of the period found, the Ollama processes' sample and the chat figures. Nothing
here reads a clock, the system, the node or ROS: the ROS layer (diagnostics.py) samples, calls
these and turns each StatusReport into a diagnostic_msgs/DiagnosticStatus. The levels are
DiagnosticStatus's values (OK 0, WARN 1, ERROR 2).
"""

import dataclasses
import enum
from typing import List, Optional, Sequence, Tuple

from .config import DiagnosticsSettings
from .engine import LoadedModel
from .resources import ProcessSample
from .resources import SystemSample
from .serving import ServingState
from .threads import format_cores

MiB = 1024 ** 2
# The states in which the node keeps a server running: it must then run and answer.
SERVER_EXPECTED_IN = ('inactive', 'active', 'activating', 'deactivating')
# Ollama shows a model kept loaded forever (keep_alive -1) as expiring at now + Go's longest
# duration (~292 years: the year 2318 today); any expiry after this year is that "never".
NEVER_AFTER_YEAR = 2200


class Level(enum.IntEnum):
    OK = 0
    WARN = 1
    ERROR = 2


@dataclasses.dataclass(frozen=True)
class StatusReport:
    """One status: its task (the name after '<node>: '), level, message and key/values."""

    task: str
    level: Level
    message: str
    values: Tuple[Tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class ServerProbe:
    """What the period's one /api/ps call found: whether the server answered, and the served
    model's and the embedding model's entries in it (None when not loaded or the server did
    not answer)."""

    reachable: bool = False
    loaded: Optional[LoadedModel] = None
    embedding_loaded: Optional[LoadedModel] = None


@dataclasses.dataclass(frozen=True)
class OllamaProcesses:
    """The sampled Ollama processes: the server (None when not sampled), the model's runners
    and the embedding model's."""

    server: Optional[ProcessSample] = None
    runners: Tuple[ProcessSample, ...] = ()
    embedding_runners: Tuple[ProcessSample, ...] = ()


def total_rss(samples: Tuple[ProcessSample, ...]) -> int:
    return sum(sample.rss for sample in samples)


@dataclasses.dataclass(frozen=True)
class ChatFigures:
    """The chat action's counters and admission occupancy at the time of the sample, and the
    robot tools it offers (from the robot_tools_file read at the last configure)."""

    served: int = 0
    failed: int = 0
    canceled: int = 0
    last_tokens_per_second: float = 0.0
    last_time_to_first_token: float = 0.0
    goals_running: int = 0
    goals_queued: int = 0
    robot_tools: Tuple[str, ...] = ()


def level_for(value: float, warn: float, error: float) -> Level:
    """The level of a figure that is worse the higher it is."""
    return Level.ERROR if value >= error else Level.WARN if value >= warn else Level.OK


def _report(task: str, level: Level, message: str,
            values: Sequence[Tuple[str, object]]) -> StatusReport:
    return StatusReport(task, level, message, tuple((key, str(value)) for key, value in values))


# ---- system --------------------------------------------------------------------------------
def cpu_status(system: SystemSample, thresholds: DiagnosticsSettings,
               sampling_cpu_seconds: float) -> StatusReport:
    """CPU use over the period; sampling_cpu_seconds: what the previous period's diagnostics
    cost in CPU time (sampling, the /api/ps call, assembling and publishing)."""
    level = level_for(system.cpu_percent, thresholds.cpu_warn_percent,
                      thresholds.cpu_error_percent)
    values = [('usage (%)', f'{system.cpu_percent:.1f}')]
    values += [(f'core {i} (%)', f'{p:.1f}') for i, p in enumerate(system.per_core_percent)]
    values += [('load average (1/5/15 min)', ' '.join(f'{x:.2f}' for x in system.load_average)),
               ('frequency (MHz)', f'{system.cpu_frequency_mhz:.0f}'
                if system.cpu_frequency_mhz else 'not readable'),
               ('diagnostics sampling CPU (ms)', f'{sampling_cpu_seconds * 1000:.2f}')]
    message = f'{system.cpu_percent:.0f} % of {len(system.per_core_percent)} cores' + (
        ' - the board is CPU bound' if level != Level.OK else '')
    return _report('System CPU', level, message, values)


def memory_status(system: SystemSample, thresholds: DiagnosticsSettings,
                  model_loaded: bool) -> StatusReport:
    """RAM use; any swap in use while a model is loaded is at least a WARN (generation from
    swapped-out weights is orders of magnitude slower)."""
    used = system.memory_used_percent
    level = level_for(used, thresholds.memory_warn_percent, thresholds.memory_error_percent)
    message = f'{used:.0f} % used, {system.memory_available / MiB / 1024:.1f} GiB available'
    if system.swap_used > 0 and model_loaded:
        level = max(level, Level.WARN)
        message += f'; {system.swap_used / MiB:.0f} MiB swapped with a model loaded'
    values = [('total (MiB)', system.memory_total // MiB),
              ('available (MiB)', system.memory_available // MiB),
              ('used (MiB)', system.memory_used // MiB), ('used (%)', f'{used:.1f}'),
              ('swap total (MiB)', system.swap_total // MiB),
              ('swap used (MiB)', system.swap_used // MiB)]
    return _report('Memory', level, message, values)


def temperature_status(system: SystemSample, thresholds: DiagnosticsSettings) -> StatusReport:
    """The hottest sensor; OK 'no sensor' where none is readable (a VM, a container)."""
    hottest = system.hottest
    if hottest is None:
        return _report('Temperature', Level.OK, 'no sensor', [('sensors', 0)])
    label, degrees = hottest
    level = level_for(degrees, thresholds.temperature_warn_c, thresholds.temperature_error_c)
    message = f'hottest {degrees:.0f} C ({label})' + (
        ' - CPU will throttle' if level == Level.ERROR else '')
    values = [('hottest (C)', f'{degrees:.1f}'), ('hottest sensor', label),
              ('sensors', len(system.temperatures))]
    values += [(f'{name} (C)', f'{value:.1f}') for name, value in system.temperatures]
    return _report('Temperature', level, message, values)


def storage_status(system: SystemSample, thresholds: DiagnosticsSettings) -> StatusReport:
    """Free space on the disk of the models directory (worse the lower it is), and what the
    models in it take."""
    if system.disk_free is None:
        return _report('Storage', Level.WARN, f'{system.disk_path} is not readable',
                       [('path', system.disk_path)])
    free_mb = system.disk_free / MiB
    level = Level.ERROR if free_mb < thresholds.disk_error_mb else \
        Level.WARN if free_mb < thresholds.disk_warn_mb else Level.OK
    message = (f'{free_mb / 1024:.1f} GiB free for models; the models take '
               f'{system.models_size / MiB / 1024:.2f} GiB')
    if level != Level.OK:
        message += ' - pulls and imports may fail'
    values = [('path', system.disk_path), ('free (MiB)', int(free_mb)),
              ('total (MiB)', int((system.disk_total or 0) / MiB)),
              ('models (MiB)', int(system.models_size / MiB))]
    return _report('Storage', level, message, values)


# ---- Ollama --------------------------------------------------------------------------------
def cpu_share(num_thread: int, processes: OllamaProcesses, per_core_percent: Sequence[float],
              threads_why: str = '') -> Tuple[str, List[Tuple[str, object]]]:
    """The model's share of the CPU (the threads sent to Ollama and how they were chosen,
    cores and nice as the running server has them) and what it uses: (a summary for the
    message, the values). The runners inherit the server's cores and nice."""
    server = processes.server
    if server is None:
        return '', []
    cores = server.cores or tuple(range(len(per_core_percent)))
    used = server.cpu_percent + sum(sample.cpu_percent for sample in
                                    processes.runners + processes.embedding_runners)
    busy = [per_core_percent[core] for core in cores if core < len(per_core_percent)]
    summary = (f'model share: {num_thread} threads on cores {format_cores(cores)} at nice '
               f'{server.nice}, using {used / 100:.1f} cores')
    return summary, [
        ('model threads (num_thread)', num_thread),
    ] + ([('model threads chosen', threads_why)] if threads_why else []) + [
        ('model cores', f'{format_cores(cores)} ({len(cores)} of {len(per_core_percent)})'),
        ('model nice', server.nice),
        ('server + runners CPU (% of one core)', f'{used:.1f}'),
        ('its cores busy (%)', f'{sum(busy) / max(1, len(busy)):.1f}'),
    ] + [(f'core {core} busy (%)', f'{per_core_percent[core]:.1f}') for core in cores
         if core < len(per_core_percent)]


def server_status(state: ServingState, probe: ServerProbe, processes: OllamaProcesses,
                  now: float, per_core_percent: Sequence[float] = ()) -> StatusReport:
    """The Ollama server: ERROR when it should run and does not (or does not answer), WARN
    while the node reports a problem with it (a failed configure, a restart in progress), OK
    otherwise; with the model's CPU share and use (cpu_share). now: time.monotonic(), for the
    uptime; per_core_percent: the system's use of each core over the period."""
    lifecycle = state.lifecycle
    server = state.server
    if server is None:
        level = Level.WARN if state.server_error else Level.OK
        message = state.server_error or f'not running ({lifecycle})'
        return _report('Ollama server', level, message, [
            ('lifecycle state', lifecycle), ('running', False), ('reachable', False)])
    if lifecycle in SERVER_EXPECTED_IN and not (probe.reachable and server.running):
        level, message = Level.ERROR, state.server_error or (
            f'the Ollama server (pid {server.pid}) exited with code {server.exit_code}'
            if server.exit_code is not None
            else f'the Ollama server at {server.base_url} does not answer')
    elif state.server_error:
        level, message = Level.WARN, state.server_error
    else:
        level, message = Level.OK, (f"{'managed' if server.managed else 'adopted'} server "
                                    f'running ({lifecycle})')
    uptime = now - server.started_at if server.started_at else 0.0
    runners = processes.runners + processes.embedding_runners
    share, share_values = cpu_share(state.num_thread, processes, per_core_percent,
                                    state.num_thread_why)
    if share and level == Level.OK:
        message += f'; {share}'
    return _report('Ollama server', level, message, [
        ('lifecycle state', lifecycle), ('managed', server.managed),
        ('url', server.base_url), ('pid', server.pid or ''), ('running', server.running),
        ('reachable', probe.reachable), ('uptime (s)', f'{uptime:.0f}'),
        ('restarts', server.restarts),
        ('server RSS (MiB)', processes.server.rss // MiB if processes.server else 0),
        ('server CPU (%)',
         f'{processes.server.cpu_percent:.1f}' if processes.server else '0.0'),
        ('runners', len(runners)),
        ('runner RSS (MiB)', total_rss(runners) // MiB),
        ('runner CPU (%)', f'{sum(sample.cpu_percent for sample in runners):.1f}'),
    ] + share_values)


def model_status(state: ServingState, model: str, probe: ServerProbe,
                 processes: OllamaProcesses, chat: ChatFigures) -> StatusReport:
    """The served model, first match wins: a pull or import in progress (OK, with its
    progress); a supervised recovery while active (WARN); a model failure (a load or unload
    that failed: ERROR while active without the model, else WARN); loaded (OK); active without
    the model (ERROR); not loaded outside active (OK). model: the served model's name, or the model
    parameter before the first configure."""
    lifecycle = state.lifecycle
    loaded = probe.loaded
    active = lifecycle == 'active'
    if state.pull_progress is not None:
        level, message = Level.OK, (f'{state.progress_verb} {model}: '
                                    f'{state.pull_progress * 100:.0f} %')
    elif active and state.recovering:
        level, message = Level.WARN, f'recovering: {state.recovering}'
    elif state.model_error:
        level = Level.ERROR if active and loaded is None else Level.WARN
        message = state.model_error
    else:
        level, message = _presence(model, loaded, lifecycle)
    return _report('Model', level, message, _model_values(
        model, loaded, processes.runners, state.capabilities) + [
        ('pull progress (%)', f'{state.pull_progress * 100:.0f}'
         if state.pull_progress is not None else ''),
        ('last tokens/s', f'{chat.last_tokens_per_second:.1f}'),
        ('last time to first token (s)', f'{chat.last_time_to_first_token:.3f}'),
        ('chats served', chat.served), ('chats failed', chat.failed),
        ('chats canceled', chat.canceled),
        ('goals running', chat.goals_running), ('goals queued', chat.goals_queued),
        ('robot tools', ', '.join(chat.robot_tools)),
    ])


def embedding_status(state: ServingState, probe: ServerProbe,
                     processes: OllamaProcesses) -> StatusReport:
    """The embedding model (embedding_model), first match wins: none configured (OK); a reload
    in progress while active (WARN); a model failure while it is not loaded (a load or unload
    that failed: ERROR while active, else WARN); loaded (OK); active without it (ERROR); not
    loaded outside active (OK)."""
    name = state.embedding_model
    loaded = probe.embedding_loaded
    active = state.lifecycle == 'active'
    if state.lifecycle == 'unconfigured':   # embedding_model is read at configure
        level, message = Level.OK, 'not configured'
    elif not name:
        level, message = Level.OK, 'none: no embedding_model at the last configure'
    elif active and state.embedding_recovering:
        level, message = Level.WARN, f'recovering: {state.embedding_recovering}'
    elif state.model_error and loaded is None:
        level = Level.ERROR if active else Level.WARN
        message = state.model_error
    else:
        level, message = _presence(name, loaded, state.lifecycle)
    return _report('Embedding model', level, message, _model_values(
        name, loaded, processes.embedding_runners, state.embedding_capabilities))


def _presence(name: str, loaded: Optional[LoadedModel], lifecycle: str) -> Tuple[Level, str]:
    """A model's status when nothing went wrong: loaded (OK), active without it (ERROR), not
    loaded outside active (OK)."""
    if loaded is not None:
        return Level.OK, f'{name} loaded ({loaded.size / MiB / 1024:.2f} GiB)'
    if lifecycle == 'active':
        return Level.ERROR, f'{name} should be loaded and is not'
    return Level.OK, f'{name} not loaded ({lifecycle})'


def _model_values(name: str, loaded: Optional[LoadedModel], runners: Tuple[ProcessSample, ...],
                  capabilities: Sequence[str]) -> List[Tuple[str, object]]:
    """The values the Model and Embedding model statuses both show."""
    return [
        ('model', name), ('loaded', loaded is not None),
        ('size (MiB)', loaded.size // MiB if loaded else 0),
        ('runner RSS (MiB)', total_rss(runners) // MiB),
        ('context length', loaded.context_length if loaded else 0),
        ('capabilities', ', '.join(capabilities)),
        ('expires at', unload_time(loaded.expires_at) if loaded else ''),
    ]


def unload_time(expires_at: str) -> str:
    """When Ollama will unload a model (/api/ps expires_at, RFC 3339): 'never' for a model
    kept loaded forever, else the time as Ollama gave it."""
    year = expires_at[:4]
    return 'never' if year.isdigit() and int(year) > NEVER_AFTER_YEAR else expires_at
