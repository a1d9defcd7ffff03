"""Issue 12: hostile and heavy input to the chat action: goal size limits, goal bursts, proxy
variables, server output without line ends, literal think tags (the TTS bridge under load:
test_tts_bridge.py)."""

import math
import socket
import threading

from action_msgs.msg import GoalStatus
import pytest
from rcl_interfaces.msg import Log
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.msg import ParameterValue
from rcl_interfaces.srv import DescribeParameters
from rcl_interfaces.srv import SetParameters
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import ChatMessage

from harness import RosClient
from harness import runners
from harness import WAIT
from harness import wait_for
from s100_llm.core.config import RANGES
from support import log_level


def test_a_burst_of_goals_from_five_clients_gets_an_answer_for_every_goal(active, domain_id):
    llm = active()
    clients = [llm.client] + [RosClient(domain_id) for _ in range(4)]
    try:
        for client in clients:
            assert client.chat_client.wait_for_server(timeout_sec=WAIT)
        sent = [client.on_executor(lambda client=client: [
            client.chat_client.send_goal_async(Chat.Goal(prompt=f'goal {i}'))
            for i in range(100)]) for client in clients]
        futures = [future for batch in sent for future in batch]
        wait_for(lambda: all(f.done() for f in futures), 'an answer to every goal request',
                 timeout=120)
        assert all(f.result().accepted for f in futures)
        results = [result for client, batch in zip(clients, sent)
                   for result in client.on_executor(lambda batch=batch: [
                       f.result().get_result_async() for f in batch])]
        wait_for(lambda: all(r.done() for r in results), 'every goal to end', 120)
        # Each was served, or (no room in the queue) ended at once saying so.
        ends = [(r.result().status, r.result().result.error_code) for r in results]
        assert set(ends) <= {(GoalStatus.STATUS_SUCCEEDED, Chat.Result.NONE),
                             (GoalStatus.STATUS_ABORTED, Chat.Result.QUEUE_FULL)}, set(ends)
        assert (GoalStatus.STATUS_SUCCEEDED, Chat.Result.NONE) in ends
        assert llm.client.chat('after the burst').result.text == 'user: after the burst\n'
    finally:
        for client in clients[1:]:
            client.close()


def set_parameter(llm, name, value):
    """What `ros2 param set /llm NAME VALUE` sends: an int for 95, a double for nan or 95.0."""
    if isinstance(value, int):
        parameter_value = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    else:
        parameter_value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    reply = llm.client._call(SetParameters, '/llm/set_parameters', SetParameters.Request(
        parameters=[ParameterMsg(name=name, value=parameter_value)]))
    return reply.results[0]


def test_numeric_parameters_take_integers_refuse_nan_and_show_their_range(start_llm):
    # An integer for a float parameter at startup (it used to crash the node).
    llm = start_llm(start_timeout=5, cpu_warn_percent=80)
    assert set_parameter(llm, 'cpu_warn_percent', 95).successful
    assert set_parameter(llm, 'cpu_error_percent', 99.5).successful
    for name, value, reason in (('temperature_error_c', math.nan, 'temperature_error_c'),
                                ('disk_warn_mb', math.inf, 'disk_warn_mb'),
                                ('memory_warn_percent', -math.inf, 'memory_warn_percent'),
                                ('cpu_error_percent', 500, 'cpu_error_percent must be in 0..100'),
                                ('start_timeout', 0, 'start_timeout must be in 0.1..3600')):
        result = set_parameter(llm, name, value)
        assert not result.successful and reason in result.reason, (name, result.reason)
    described = llm.client._call(DescribeParameters, '/llm/describe_parameters',
                                 DescribeParameters.Request(names=sorted(RANGES))).descriptors
    for descriptor in described:
        low, high = RANGES[descriptor.name]
        ranges = list(descriptor.floating_point_range) + list(descriptor.integer_range)
        assert [(r.from_value, r.to_value) for r in ranges] == [(low, high)], descriptor.name
    # The integers reached the settings: configure reads them.
    assert llm.client.change_state('configure'), llm.node.output()


@pytest.mark.parametrize('fields, reason', [
    ({'stop': ['x' * 1_000_000] * 16}, 'stop takes 1..16 non-empty strings of at most 256'),
    ({'session_id': 's' * 4_000_000}, 'session_id has 4000000 characters; at most 128'),
    ({'context': [ChatMessage(role='user')] * 100_000}, 'context has 100000 messages'),
    ({'context': [ChatMessage(role='assistant', content='x', thinking='y' * 1_000_000)]},
     'context (with its thinking) have 1000003 characters'),
])
def test_oversized_goal_fields_are_refused_with_their_limit(active, fields, reason):
    llm = active()
    run = llm.client.send_chat(Chat.Goal(prompt='hi', **fields))
    assert run.wait_accepted()
    assert run.wait_result().error_code == Chat.Result.INVALID_GOAL
    assert reason in run.result.error_message
    assert reason in llm.client.wait_log('chat goal rejected')
    assert llm.client.chat('still serving').result.text == 'user: still serving\n'


@pytest.mark.parametrize('model, think, answer', [
    ('echo:latest', Chat.Goal.THINK_DEFAULT, 'user: <think>literal</think> tags\n'),
    ('thinker:latest', Chat.Goal.THINK_OFF, 'Answer: <think>literal</think> tags'),
])
def test_literal_think_tags_inside_an_answer_stay_in_the_answer(active, model, think, answer):
    llm = active(model=model)
    result = llm.client.chat('<think>literal</think> tags', think=think).result
    assert (result.text, result.thinking) == (answer, '')


class ProxyStandIn:
    """A loopback TCP listener in place of an HTTP proxy: it records every connection."""

    def __init__(self) -> None:
        self.socket = socket.create_server(('127.0.0.1', 0))
        self.connections = []
        self.url = f'http://127.0.0.1:{self.socket.getsockname()[1]}'
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, address = self.socket.accept()
            except OSError:
                return
            self.connections.append(address)
            connection.close()


def test_proxy_variables_do_not_capture_the_nodes_ollama_traffic(active):
    proxy = ProxyStandIn()
    environment = {name: proxy.url for name in (
        'http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY')}
    environment.update(no_proxy='', NO_PROXY='')
    try:
        llm = active(env=environment)      # configure probes the port, activate loads
        run = llm.client.chat('private prompt')
        assert run.status == GoalStatus.STATUS_SUCCEEDED
        assert run.result.text == 'user: private prompt\n'
        llm.client.fresh_statuses(lambda s: s['llm: Model'].level == b'\x00', 'model status OK')
        assert proxy.connections == []
    finally:
        proxy.socket.close()


def peak_rss_mb(pid):
    with open(f'/proc/{pid}/status') as status:
        line = next(line for line in status if line.startswith('VmHWM:'))
    return int(line.split()[1]) / 1024


def test_server_output_without_line_breaks_does_not_grow_the_node(start_llm, tmp_path):
    chatty = tmp_path / 'chatty-ollama'
    chatty.write_text("#!/bin/sh\nhead -c 200000000 /dev/zero | tr '\\0' x >&2\n"
                      'printf "\\nafter\\n" >&2\nexit 3\n')
    chatty.chmod(0o755)
    llm = start_llm(ollama_bin=str(chatty))
    before = peak_rss_mb(llm.node.pid)
    assert not llm.client.change_state('configure')
    llm.client.wait_log('exited with code 3 during start')
    assert 'the rest of the line is dropped' in llm.client.wait_log('[line cut')
    llm.client.wait_log('[ollama] after')
    # 200 MB went through the reader; what it held stays far below that.
    assert peak_rss_mb(llm.node.pid) - before < 50


def test_an_intentional_deactivate_is_a_warning_and_streamed_tokens_are_counted(active):
    llm = active(model='endless:latest', env={'OLLAMA_EMULATOR_TOKEN_RATE': '100'})
    canceled = llm.client.send_chat(Chat.Goal(prompt='go', max_tokens=8192))
    assert canceled.wait_accepted()
    wait_for(lambda: len(canceled.feedback) >= 3, 'a few tokens')
    canceled.cancel()
    result = canceled.wait_result()
    assert result.stats.completion_tokens == len(result.text.split()) > 0
    aborted = llm.client.send_chat(Chat.Goal(prompt='go', max_tokens=8192))
    assert aborted.wait_accepted()
    wait_for(lambda: len(aborted.feedback) >= 3, 'a few tokens')
    assert llm.client.change_state('deactivate')
    result = aborted.wait_result()
    assert aborted.status == GoalStatus.STATUS_ABORTED
    assert result.stats.completion_tokens == len(result.text.split()) > 0
    llm.client.wait_log('the node is deactivating')
    with llm.client._lock:
        levels = {log_level(m.level) for m in llm.client.rosout
                  if 'the node is deactivating' in m.msg}
    assert levels == {log_level(Log.WARN)}


@pytest.mark.real_model
def test_the_runners_per_request_lines_are_not_logged_at_info(active):
    llm = active(model='smollm2:135m', num_thread=2)
    for _ in range(2):
        assert llm.client.chat('Hi', max_tokens=3).status == GoalStatus.STATUS_SUCCEEDED
    assert llm.client.change_state('deactivate')
    wait_for(lambda: not runners(llm), 'the runner to exit')
    llm.client.wait_log('its runner has exited')
    forwarded = [m for m in llm.client.log_messages() if m.startswith('[ollama]')]
    # The server's other lines still are (this one in every Ollama generation).
    assert any('llama runner started' in m for m in forwarded)
    assert not [m for m in forwarded if '| task ' in m or 'print_timing' in m]
