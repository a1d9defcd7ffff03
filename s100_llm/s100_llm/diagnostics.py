"""Resource and health diagnostics on /diagnostics, in every lifecycle state.

Seven statuses named '<node>: <task>' (the diagnostic_updater convention) with hardware_id =
the host name: System CPU, Memory, Temperature, Storage, Ollama server, Model, Embedding model.
Their levels, messages and values are pure functions in core.status; this module only gathers
their inputs once per period (a psutil sample through core.resources, the node's ServingState
snapshot, one /api/ps call through the snapshot's engine, the chat figures), assembles the
statuses and publishes them. A thread of its own does this, so transitions and chats never stall
it; System CPU reports what the previous period's work cost.

The period is wall-clock time, not an rclpy timer on the node's clock: resource figures are per
wall-clock second, and a paused simulation clock (use_sim_time) must not stop the health report.
A plain thread also spares the executor a wake-up and a dispatch per period: on a 2-core machine
the idle node went from 1.07 % to 0.77 % of a core with diagnostics at 1 Hz.
"""

import socket
import threading
import time
from typing import Optional, TYPE_CHECKING

from diagnostic_msgs.msg import DiagnosticArray
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_msgs.msg import KeyValue

from . import parameters
from .core import status
from .core.config import DiagnosticsSettings
from .core.engine import EngineError
from .core.engine import loaded_entry
from .core.resources import ResourceSampler
from .core.serving import ServingState

if TYPE_CHECKING:
    from .node import LlmNode


class DiagnosticsPublisher:
    """The diagnostics thread: samples, assembles the seven statuses and publishes them."""

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

    def publish(self) -> None:
        started = time.thread_time()
        thresholds = self._thresholds()
        state = self.node.serving_state()
        # Before the first configure the snapshot names no model: report the parameter's.
        model = state.model or parameters.value(self.node, 'model')
        if self.sampler is None or self.sampler.disk_path != state.models_dir:
            self.sampler = ResourceSampler(state.models_dir)
        system = self.sampler.system()
        processes = self._sample_processes(state)
        probe = self._probe(state)
        reports = [
            status.cpu_status(system, thresholds, self.sampling_cpu_seconds),
            status.memory_status(system, thresholds, state.model_loaded),
            status.temperature_status(system, thresholds),
            status.storage_status(system, thresholds),
            status.server_status(state, probe, processes, time.monotonic(),
                                 system.per_core_percent),
            status.model_status(state, model, probe, processes, self._chat_figures()),
            status.embedding_status(state, probe, processes),
        ]
        array = DiagnosticArray(status=[self._message(report) for report in reports])
        array.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(array)
        self.sampling_cpu_seconds = time.thread_time() - started

    def _thresholds(self) -> DiagnosticsSettings:
        """The thresholds apply at once: read from the parameters every period."""
        return parameters.read_part(self.node, DiagnosticsSettings)

    def _sample_processes(self, state: ServingState) -> status.OllamaProcesses:
        """RSS and CPU of the server and its runners (nothing while no server runs)."""
        assert self.sampler is not None
        if state.server is None:
            return status.OllamaProcesses()
        server_pid = state.server.pid
        samples = self.sampler.processes(([server_pid] if server_pid else [])
                                         + list(state.runner_pids)
                                         + list(state.embedding_runner_pids))
        return status.OllamaProcesses(
            server=next((s for s in samples if s.pid == server_pid), None),
            runners=tuple(s for s in samples if s.pid in state.runner_pids),
            embedding_runners=tuple(s for s in samples
                                    if s.pid in state.embedding_runner_pids))

    @staticmethod
    def _probe(state: ServingState) -> status.ServerProbe:
        """The period's one /api/ps call: whether the server answers and what it holds."""
        if state.server is None or state.engine is None:
            return status.ServerProbe()
        try:
            loaded = state.engine.loaded(quick=True)
        except EngineError:
            return status.ServerProbe(reachable=False)
        return status.ServerProbe(
            True, loaded_entry(loaded, state.model),
            loaded_entry(loaded, state.embedding_model) if state.embedding_model else None)

    def _chat_figures(self) -> status.ChatFigures:
        """The only reads of the chat action: its counters, the admission's occupancy and the
        robot tools' names."""
        counters = self.node.chat.counters
        admission = self.node.chat.admission
        toolbox = self.node.chat.toolbox
        return status.ChatFigures(
            served=counters.served, failed=counters.failed, canceled=counters.canceled,
            last_tokens_per_second=counters.last_tokens_per_second,
            last_time_to_first_token=counters.last_time_to_first_token,
            goals_running=admission.running, goals_queued=admission.waiting,
            robot_tools=tuple(toolbox.tools) if toolbox is not None else ())

    def _message(self, report: status.StatusReport) -> DiagnosticStatus:
        return DiagnosticStatus(
            level=bytes([report.level]), name=f'{self.prefix}: {report.task}',
            message=report.message, hardware_id=self.hardware_id,
            values=[KeyValue(key=key, value=value) for key, value in report.values])
