"""Issue: resource diagnostics on /diagnostics, read from a separate process in every state."""

import os
import signal
import socket
from types import SimpleNamespace

from diagnostic_msgs.msg import DiagnosticArray
from diagnostic_msgs.msg import DiagnosticStatus
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from harness import servers
from harness import wait_for
from s100_llm import parameters
from s100_llm.core.serving import ServingState
from s100_llm.core.status import Level
from s100_llm.diagnostics import DiagnosticsPublisher

TASKS = ('System CPU', 'Memory', 'Temperature', 'Storage', 'Ollama server', 'Model',
         'Embedding model')
KEYS = {
    'System CPU': ['usage (%)', 'core 0 (%)', 'load average (1/5/15 min)', 'frequency (MHz)',
                   'diagnostics sampling CPU (ms)'],
    'Memory': ['total (MiB)', 'available (MiB)', 'used (%)', 'swap used (MiB)'],
    'Temperature': ['sensors'],
    'Storage': ['path', 'free (MiB)', 'total (MiB)', 'models (MiB)'],
    'Ollama server': ['lifecycle state', 'running', 'reachable'],
    'Model': ['model', 'loaded', 'chats served', 'chats failed', 'chats canceled',
              'goals running', 'goals queued', 'last tokens/s', 'last time to first token (s)'],
    'Embedding model': ['model', 'loaded', 'size (MiB)', 'capabilities'],
}
SERVER_KEYS = ['managed', 'pid', 'uptime (s)', 'restarts', 'server RSS (MiB)', 'server CPU (%)',
               'runner RSS (MiB)', 'runner CPU (%)']
MODEL_KEYS = ['size (MiB)', 'context length', 'expires at']
OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def values(status):
    return {kv.key: kv.value for kv in status.values}


def check_every_status(statuses, state):
    assert sorted(statuses) == sorted(f'llm: {task}' for task in TASKS)
    for task, keys in KEYS.items():
        status = statuses[f'llm: {task}']
        assert status.hardware_id == socket.gethostname()
        assert status.message
        assert set(keys) <= set(values(status)), task
    assert values(statuses['llm: Ollama server'])['lifecycle state'] == state


def test_every_status_in_every_state(start_llm):
    llm = start_llm()
    client = llm.client
    check_every_status(client.fresh_statuses(), 'unconfigured')
    assert client.change_state('configure')
    statuses = client.fresh_statuses(
        lambda s: values(s['llm: Ollama server'])['lifecycle state'] == 'inactive')
    check_every_status(statuses, 'inactive')
    server = values(statuses['llm: Ollama server'])
    assert set(SERVER_KEYS) <= set(server) and server['running'] == 'True'
    assert statuses['llm: Ollama server'].level == OK
    assert client.change_state('activate')
    client.chat('hello')
    statuses = client.fresh_statuses(
        lambda s: values(s['llm: Model'])['chats served'] == '1', 'a served chat in the stats')
    check_every_status(statuses, 'active')
    model = values(statuses['llm: Model'])
    assert set(MODEL_KEYS) <= set(model)
    assert model['loaded'] == 'True' and model['context length'] == '4096'
    assert model['expires at'] == 'never'
    assert float(model['last tokens/s']) > 0
    assert int(values(statuses['llm: Ollama server'])['runners']) == 1
    assert client.change_state('deactivate')
    statuses = client.fresh_statuses(lambda s: values(s['llm: Model'])['loaded'] == 'False')
    check_every_status(statuses, 'inactive')


def test_levels_follow_the_thresholds(start_llm):
    # Thresholds at the ends of their ranges (percentages 0..100, temperatures -50..200 °C).
    llm = start_llm(cpu_warn_percent=0.0, cpu_error_percent=100.0, memory_warn_percent=0.0,
                    memory_error_percent=0.1, disk_warn_mb=1e9, disk_error_mb=1.0,
                    temperature_warn_c=-50.0, temperature_error_c=-50.0)
    llm.activate()       # the thresholds are read at configure
    statuses = llm.client.fresh_statuses()
    cpu = statuses['llm: System CPU']
    # CPU can read 100 % on a busy machine, which is the ERROR threshold.
    assert cpu.level == (ERROR if float(values(cpu)['usage (%)']) >= 100.0 else WARN)
    assert statuses['llm: Memory'].level == ERROR
    assert statuses['llm: Storage'].level == WARN
    temperature = statuses['llm: Temperature']
    if values(temperature)['sensors'] == '0':
        assert (temperature.level, temperature.message) == (OK, 'no sensor')
    else:
        assert temperature.level == ERROR


def test_a_killed_server_is_an_error(start_llm):
    # A long restart backoff keeps the dead server visible long enough to be reported.
    llm = start_llm(restart_backoff=600.0)
    llm.activate()
    pid = int(values(llm.client.fresh_statuses()['llm: Ollama server'])['pid'])
    os.kill(pid, signal.SIGKILL)
    # The first ERROR may come from the failed /api/ps before the process is reaped; the
    # status then names the exit once the supervision has seen it.
    statuses = llm.client.fresh_statuses(
        lambda s: s['llm: Ollama server'].level == ERROR
        and 'exited with code' in s['llm: Ollama server'].message,
        'the server status to turn ERROR and name the exit')
    server = statuses['llm: Ollama server']
    assert values(server)['reachable'] == 'False'


def test_a_recovered_server_clears_its_error(start_llm):
    llm = start_llm()
    llm.activate()
    (server,) = servers(llm)
    server.kill()
    llm.client.wait_log('recovered: server running and model loaded')
    statuses = llm.client.fresh_statuses(
        lambda s: s['llm: Ollama server'].level == OK and s['llm: Model'].level == OK,
        'the statuses to turn OK once recovered')
    assert values(statuses['llm: Ollama server'])['restarts'] == '1'


def test_storage_is_measured_where_models_go_before_configure(start_llm):
    llm = start_llm(models_dir='~/.ollama/models')
    statuses = llm.client.fresh_statuses()
    assert values(statuses['llm: Storage'])['path'] == os.path.expanduser('~/.ollama/models')


def test_a_model_that_cannot_be_loaded_shows_on_the_model_status(start_llm):
    llm = start_llm(model='nosuch:latest')
    assert llm.client.change_state('configure')
    assert not llm.client.change_state('activate')
    statuses = llm.client.fresh_statuses(lambda s: s['llm: Model'].level != OK,
                                         'the Model status to report the failure')
    model = statuses['llm: Model']
    assert model.level == WARN
    assert 'activate failed' in model.message and 'nosuch:latest' in model.message
    assert statuses['llm: Ollama server'].level == OK


def test_thresholds_apply_at_once(start_llm):
    llm = start_llm(disk_warn_mb=2.0, disk_error_mb=1.0)
    llm.client.fresh_statuses(lambda s: s['llm: Storage'].level == OK, 'storage OK')
    llm.client.set_parameters(disk_warn_mb=1e9)
    llm.client.fresh_statuses(lambda s: s['llm: Storage'].level == WARN,
                              'the new threshold to turn storage WARN before configure')


class ContractNode(Node):
    """A node offering the diagnostics only what they may read: serving_state(), the chat
    action's counters and admission occupancy, and rclpy's own node API."""

    def __init__(self, context: Context, state: ServingState) -> None:
        super().__init__('llm', namespace='robot1', context=context)
        parameters.declare(self)
        self.set_parameters([Parameter('model', value='qwen3:0.6b')])
        self.state = state
        self.chat = SimpleNamespace(
            counters=SimpleNamespace(served=4, failed=1, canceled=2, last_tokens_per_second=9.5,
                                     last_time_to_first_token=0.25),
            admission=SimpleNamespace(running=1, waiting=3), toolbox=None)

    def serving_state(self) -> ServingState:
        return self.state


def test_core_levels_are_the_message_levels():
    assert [bytes([level]) for level in Level] == [OK, WARN, ERROR]


def test_the_publisher_reads_the_node_only_through_the_snapshot(domain_id, tmp_path):
    # Any other attribute of the node the publisher read would raise here (the node has none),
    # and the statuses would not arrive.
    state = ServingState(lifecycle='unconfigured', models_dir=str(tmp_path),
                         server_error='port 11434 is taken by another program',
                         model_error="activate failed: model 'nosuch:latest' not found")
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    try:
        node = ContractNode(context, state)
        received = []
        node.create_subscription(DiagnosticArray, '/diagnostics', received.append, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        diagnostics = DiagnosticsPublisher(node)
        diagnostics.stop()          # publish on demand, not on the thread's period

        def statuses():
            diagnostics.publish()
            executor.spin_once(timeout_sec=0.1)
            return received and {status.name: status for status in received[-1].status}
        statuses = wait_for(statuses, 'the statuses over DDS')
        assert sorted(statuses) == sorted(f'robot1/llm: {task}' for task in TASKS)
        server = statuses['robot1/llm: Ollama server']
        assert (server.level, server.message) == (WARN, state.server_error)
        model = statuses['robot1/llm: Model']
        assert (model.level, model.message) == (WARN, state.model_error)
        assert values(model)['model'] == 'qwen3:0.6b'    # the parameter, before configure
        assert {key: values(model)[key] for key in (
            'chats served', 'chats failed', 'chats canceled', 'last tokens/s',
            'last time to first token (s)', 'goals running', 'goals queued')} == {
            'chats served': '4', 'chats failed': '1', 'chats canceled': '2',
            'last tokens/s': '9.5', 'last time to first token (s)': '0.250',
            'goals running': '1', 'goals queued': '3'}
        assert values(statuses['robot1/llm: Storage'])['path'] == str(tmp_path)
        assert all(status.hardware_id == socket.gethostname() for status in statuses.values())
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
