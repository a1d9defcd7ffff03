"""Resource and health diagnostics on /diagnostics, in every lifecycle state.

Six statuses named '<node>: <task>' (the diagnostic_updater convention) with hardware_id =
the host name: System CPU, Memory, Temperature, Storage, Ollama server, Model. A thread of its
own samples with psutil (core.resources), so transitions and chats never stall it; each status
also reports what the sampling itself cost.

The period is wall-clock time, not an rclpy timer on the node's clock: resource figures are per
wall-clock second, and a paused simulation clock (use_sim_time) must not stop the health report.
A plain thread also spares the executor a wake-up and a dispatch per period: on a 2-core machine
the idle node went from 1.07 % to 0.77 % of a core with diagnostics at 1 Hz.
"""

import dataclasses
import socket
import threading
import time
from typing import List, Optional, Tuple, TYPE_CHECKING

from diagnostic_msgs.msg import DiagnosticArray
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_msgs.msg import KeyValue

from .core.config import DiagnosticsSettings
from .core.engine import EngineError
from .core.engine import LoadedModel
from .core.resources import ProcessSample
from .core.resources import ResourceSampler
from .core.resources import SystemSample
from .parameters import expand_models_dir
from .parameters import parameter_name

if TYPE_CHECKING:
    from .node import LlmNode

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
MiB = 1024 ** 2


def level_for(value: float, warn: float, error: float) -> bytes:
    return ERROR if value >= error else WARN if value >= warn else OK


def _status(name: str, level: bytes, message: str, values: List[Tuple[str, object]],
            hardware_id: str) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values])


class DiagnosticsPublisher:
    def __init__(self, node: 'LlmNode') -> None:
        self.node = node
        self.hardware_id = socket.gethostname()
        # 'llm', or 'robot1/llm' in a namespace: robots' statuses stay apart on /diagnostics.
        self.prefix = node.get_fully_qualified_name().lstrip('/')
        self.sampler: Optional[ResourceSampler] = None
        self.sampling_cpu_seconds = 0.0
        self.publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._publish_every, args=(node.get_parameter('diagnostics_period').value,),
            name='diagnostics', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing (before the node is destroyed)."""
        self._stopping.set()
        self._thread.join(timeout=5.0)

    def _publish_every(self, period: float) -> None:
        deadline = time.monotonic()
        while True:
            deadline = max(deadline + period, time.monotonic())
            if self._stopping.wait(deadline - time.monotonic()):
                return
            try:
                self.publish()
            except Exception as error:  # keep reporting; say what went wrong
                if not self.node.context.ok():
                    return      # Ctrl-C shut rclpy down before the node stopped this thread
                self.node.get_logger().error(
                    f'diagnostics raised {type(error).__name__}: {error}')

    def _name(self, task: str) -> str:
        return f'{self.prefix}: {task}'

    def publish(self) -> None:
        started = time.thread_time()
        settings = self._thresholds()
        models_dir = self._models_dir()
        if self.sampler is None or self.sampler.disk_path != models_dir:
            self.sampler = ResourceSampler(models_dir)
        system = self.sampler.system()
        statuses = [self._cpu(system, settings), self._memory(system, settings),
                    self._temperature(system, settings), self._storage(system, settings)]
        statuses += self._ollama()
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(array)
        self.sampling_cpu_seconds = time.thread_time() - started

    def _thresholds(self) -> DiagnosticsSettings:
        """The thresholds apply at once: read from the parameters every period."""
        return DiagnosticsSettings(**{
            field.name: self.node.get_parameter(parameter_name(DiagnosticsSettings,
                                                               field.name)).value
            for field in dataclasses.fields(DiagnosticsSettings)})

    def _models_dir(self) -> str:
        """Where models are (configured) or will be (before configure: the parameter)."""
        if self.node.settings is not None:
            return self.node.settings.models_dir
        return expand_models_dir(self.node.get_parameter('models_dir').value)

    # ---- system ----------------------------------------------------------------------------
    def _cpu(self, system: SystemSample, settings: DiagnosticsSettings) -> DiagnosticStatus:
        level = level_for(system.cpu_percent, settings.cpu_warn_percent,
                          settings.cpu_error_percent)
        values: List[Tuple[str, object]] = [('usage (%)', f'{system.cpu_percent:.1f}')]
        values += [(f'core {i} (%)', f'{p:.1f}') for i, p in enumerate(system.per_core_percent)]
        values += [('load average (1/5/15 min)',
                    ' '.join(f'{x:.2f}' for x in system.load_average)),
                   ('frequency (MHz)', f'{system.cpu_frequency_mhz:.0f}'
                    if system.cpu_frequency_mhz else 'not readable'),
                   ('diagnostics sampling CPU (ms)', f'{self.sampling_cpu_seconds * 1000:.2f}')]
        message = f'{system.cpu_percent:.0f} % of {len(system.per_core_percent)} cores' + (
            ' - the board is CPU bound' if level != OK else '')
        return _status(self._name('System CPU'), level, message, values, self.hardware_id)

    def _memory(self, system: SystemSample, settings: DiagnosticsSettings) -> DiagnosticStatus:
        used = system.memory_used_percent
        level = level_for(used, settings.memory_warn_percent, settings.memory_error_percent)
        message = (f'{used:.0f} % used, {system.memory_available / MiB / 1024:.1f} GiB '
                   'available')
        if system.swap_used > 0 and self.node.model_loaded:
            level = max(level, WARN)
            message += f'; {system.swap_used / MiB:.0f} MiB swapped with a model loaded'
        values = [('total (MiB)', system.memory_total // MiB),
                  ('available (MiB)', system.memory_available // MiB),
                  ('used (MiB)', system.memory_used // MiB), ('used (%)', f'{used:.1f}'),
                  ('swap total (MiB)', system.swap_total // MiB),
                  ('swap used (MiB)', system.swap_used // MiB)]
        return _status(self._name('Memory'), level, message, values, self.hardware_id)

    def _temperature(self, system: SystemSample,
                     settings: DiagnosticsSettings) -> DiagnosticStatus:
        hottest = system.hottest
        if hottest is None:
            return _status(self._name('Temperature'), OK, 'no sensor', [('sensors', 0)],
                           self.hardware_id)
        label, degrees = hottest
        level = level_for(degrees, settings.temperature_warn_c, settings.temperature_error_c)
        message = f'hottest {degrees:.0f} C ({label})' + (
            ' - CPU will throttle' if level == ERROR else '')
        values = [('hottest (C)', f'{degrees:.1f}'), ('hottest sensor', label),
                  ('sensors', len(system.temperatures))]
        values += [(f'{name} (C)', f'{value:.1f}') for name, value in system.temperatures]
        return _status(self._name('Temperature'), level, message, values, self.hardware_id)

    def _storage(self, system: SystemSample, settings: DiagnosticsSettings) -> DiagnosticStatus:
        if system.disk_free is None:
            return _status(self._name('Storage'), WARN, f'{system.disk_path} is not readable',
                           [('path', system.disk_path)], self.hardware_id)
        free_mb = system.disk_free / MiB
        level = ERROR if free_mb < settings.disk_error_mb else \
            WARN if free_mb < settings.disk_warn_mb else OK
        message = f'{free_mb / 1024:.1f} GiB free for models'
        if level != OK:
            message += ' - pulls may fail'
        values = [('path', system.disk_path), ('free (MiB)', int(free_mb)),
                  ('total (MiB)', int((system.disk_total or 0) / MiB))]
        return _status(self._name('Storage'), level, message, values, self.hardware_id)

    # ---- Ollama ----------------------------------------------------------------------------
    def _ollama(self) -> List[DiagnosticStatus]:
        node = self.node
        state = node.state_label
        server = node.server
        if server is None:
            level = WARN if node.server_error else OK
            message = node.server_error or f'not running ({state})'
            server_status = _status(self._name('Ollama server'), level, message, [
                ('lifecycle state', state), ('running', False), ('reachable', False)],
                self.hardware_id)
            return [server_status, self._model_status(None, [], state)]
        status = server.status()
        runners = node.runner_processes
        assert self.sampler is not None
        samples = self.sampler.processes(([status.pid] if status.pid else [])
                                         + [r.pid for r in runners])
        server_sample = next((s for s in samples if s.pid == status.pid), None)
        runner_samples = [s for s in samples if s.pid != status.pid]
        # One /api/ps call per period tells both whether the server answers and what it holds.
        reachable, loaded = False, None
        if node.engine is not None:
            try:
                loaded = node.engine.loaded_model(node.model, quick=True)
                reachable = True
            except EngineError:
                reachable = False
        expected = state in ('inactive', 'active', 'activating', 'deactivating')
        if expected and (not reachable or not status.running):
            code = server.exit_code()
            level, message = ERROR, node.server_error or (
                f'the Ollama server (pid {status.pid}) exited with code {code}'
                if code is not None else f'the Ollama server at {server.base_url} does not answer')
        elif node.server_error:
            level, message = WARN, node.server_error
        else:
            level, message = OK, (f"{'adopted' if server.adopted else 'managed'} server "
                                  f'running ({state})')
        uptime = time.monotonic() - status.started_at if status.started_at else 0.0
        values: List[Tuple[str, object]] = [
            ('lifecycle state', state), ('managed', not server.adopted),
            ('url', server.base_url), ('pid', status.pid or ''), ('running', status.running),
            ('reachable', reachable), ('uptime (s)', f'{uptime:.0f}'),
            ('restarts', status.restarts),
            ('server RSS (MiB)', _mib(server_sample)),
            ('server CPU (%)', _cpu(server_sample)),
            ('runners', len(runner_samples)),
            ('runner RSS (MiB)', sum(s.rss for s in runner_samples) // MiB),
            ('runner CPU (%)', f'{sum(s.cpu_percent for s in runner_samples):.1f}'),
        ]
        server_status = _status(self._name('Ollama server'), level, message, values,
                                self.hardware_id)
        return [server_status, self._model_status(loaded, runner_samples, state)]

    def _model_status(self, loaded: Optional[LoadedModel], runners: List[ProcessSample],
                      state: str) -> DiagnosticStatus:
        node = self.node
        counters = node.chat.counters
        admission = node.chat.admission
        model = node.model or node.get_parameter('model').value
        if node.pull_progress is not None:
            level, message = OK, f'pulling {model}: {node.pull_progress * 100:.0f} %'
        elif state == 'active' and node.recovering:
            level, message = WARN, f'recovering: {node.recovering}'
        elif node.model_error:
            level = ERROR if state == 'active' and loaded is None else WARN
            message = node.model_error
        elif loaded is not None:
            level, message = OK, f'{model} loaded ({loaded.size / MiB / 1024:.2f} GiB)'
        elif state == 'active':
            level, message = ERROR, f'{model} should be loaded and is not'
        else:
            level, message = OK, f'{model} not loaded ({state})'
        values: List[Tuple[str, object]] = [
            ('model', model), ('loaded', loaded is not None),
            ('size (MiB)', loaded.size // MiB if loaded else 0),
            ('runner RSS (MiB)', sum(s.rss for s in runners) // MiB),
            ('context length', loaded.context_length if loaded else 0),
            ('expires at', loaded.expires_at if loaded else ''),
            ('pull progress (%)', f'{node.pull_progress * 100:.0f}'
             if node.pull_progress is not None else ''),
            ('last tokens/s', f'{counters.last_tokens_per_second:.1f}'),
            ('last time to first token (s)', f'{counters.last_time_to_first_token:.3f}'),
            ('chats served', counters.served), ('chats failed', counters.failed),
            ('chats canceled', counters.canceled),
            ('goals running', admission.running), ('goals queued', admission.waiting),
        ]
        return _status(self._name('Model'), level, message, values, self.hardware_id)


def _mib(sample: Optional[ProcessSample]) -> int:
    return sample.rss // MiB if sample else 0


def _cpu(sample: Optional[ProcessSample]) -> str:
    return f'{sample.cpu_percent:.1f}' if sample else '0.0'
