"""Issue 13: a robot developer's first session with the real `ros2` commands against one
`ros2 launch s100_llm llm.launch.py ollama_bin:=s100-ollama-emulator ...`, shared by these
tests because none of them changes the node's state (they look, and chat)."""

import re
import signal
from typing import List

import yaml

from cli.cli_harness import Launch
from cli.cli_harness import Ros2
from cli.cli_harness import stop_process
from harness import api_ps
from harness import install_prefix
from harness import runners
from harness import servers
from harness import wait_for

LAUNCH_FILE = install_prefix() / 'share' / 's100_llm' / 'launch' / 'llm.launch.py'


def quoted_fields(name: str, printed: str) -> List[str]:
    """The values of `name: '...'` in what ros2cli printed (YAML single-quoted strings, which
    may span lines)."""
    return [yaml.safe_load(f"v: '{value}'")['v']
            for value in re.findall(rf"^\s*{name}: '(.*?)'$", printed, re.MULTILINE | re.DOTALL)]


def test_show_args_lists_every_argument_with_its_description(ros2: Ros2):
    shown = ros2('launch', 's100_llm', 'llm.launch.py', '--show-args').stdout
    # "    'model':\n        Ollama model to serve.\n        (default: 'deepseek-r1:1.5b')"
    described = dict(re.findall(r"^\s+'(\w+)':\n\s+(\S.*)$", shown, re.MULTILINE))
    assert set(described) == {
        'namespace', 'params_file', 'model', 'models_dir', 'host', 'ollama_bin', 'autostart',
        'log_level', 'tts_bridge', 'diagnostic_aggregator'}, shown
    assert all(not text.startswith('no description') for text in described.values()), shown


def test_the_launch_reaches_active_by_itself(shared_launch: Launch, shared_ros2: Ros2):
    assert shared_ros2('lifecycle', 'get', '/llm').stdout.strip() == 'active [3]'
    assert [m['name'] for m in api_ps(shared_launch)] == ['echo:latest']
    assert len(servers(shared_launch)) == 1 and len(runners(shared_launch)) == 1
    # What the node runs is its own: the server is the node's child.
    assert servers(shared_launch)[0].ppid() == shared_launch.node().pid


def test_lifecycle_list_and_nodes(shared_launch: Launch, shared_ros2: Ros2):
    transitions = shared_ros2('lifecycle', 'list', '/llm').stdout
    assert re.findall(r'^- (\w+) \[\d+\]', transitions, re.MULTILINE) == \
        ['deactivate', 'shutdown'], transitions
    assert shared_ros2('lifecycle', 'nodes').stdout.split() == ['/llm']
    assert '/llm' in shared_ros2('node', 'list').stdout.split()


def test_action_list_shows_the_chat_action_and_its_type(shared_launch: Launch,
                                                        shared_ros2: Ros2):
    listed = shared_ros2('action', 'list', '-t').stdout.splitlines()
    assert '/llm/chat [s100_llm_msgs/action/Chat]' in listed, listed


def test_send_goal_prints_the_streamed_deltas_and_the_result(shared_launch: Launch,
                                                             shared_ros2: Ros2):
    sent = shared_ros2('action', 'send_goal', '/llm/chat', 's100_llm_msgs/action/Chat',
                       "{prompt: 'Hello robot'}", '--feedback').stdout
    assert 'Goal accepted' in sent, sent
    result = sent[sent.index('Result:'):]
    # The echo model answers "user: <prompt>\n", streamed word by word (one line per message).
    assert len(quoted_fields('delta', sent[:sent.index('Result:')])) >= 2, sent
    assert ''.join(quoted_fields('delta', sent[:sent.index('Result:')])) == \
        'user: Hello robot\n', sent
    assert quoted_fields('text', result) == ['user: Hello robot\n'], sent
    assert re.search(r'completion_tokens: [1-9]', result), sent
    assert re.search(r'tokens_per_second: [0-9.]*[1-9]', result), sent
    assert 'Goal finished with status: SUCCEEDED' in sent, sent


def test_the_chat_cli_streams_and_exits_0(shared_launch: Launch, shared_ros2: Ros2):
    asked = shared_ros2('run', 's100_llm', 'chat', 'What is the capital of France?')
    assert asked.stdout.strip() == 'user: What is the capital of France?', asked
    assert 'tokens/s' in asked.stderr, asked.stderr


def test_param_get_and_describe(shared_launch: Launch, shared_ros2: Ros2):
    assert shared_ros2('param', 'get', '/llm', 'model').stdout.strip() == \
        'String value is: echo:latest'
    described = shared_ros2('param', 'describe', '/llm', 'cpu_warn_percent').stdout
    assert 'Type: double' in described, described
    # Issue 12 item 17: every numeric parameter has a range, a percentage up to 100.
    assert 'Min value:' in described and 'Max value: 100.0' in described, described


def test_diagnostics_echo_shows_the_seven_statuses(shared_launch: Launch, shared_ros2: Ros2):
    echoed = shared_ros2('topic', 'echo', '/diagnostics', '--once').stdout
    names = [status['name'] for status in yaml.safe_load(echoed.split('---')[0])['status']]
    assert names == ['llm: System CPU', 'llm: Memory', 'llm: Temperature', 'llm: Storage',
                     'llm: Ollama server', 'llm: Model', 'llm: Embedding model'], echoed


def test_diagnostics_rate_is_the_configured_one(shared_launch: Launch, shared_ros2: Ros2,
                                                tmp_path):
    period = shared_ros2('param', 'get', '/llm', 'diagnostics_period').stdout
    configured = 1.0 / float(period.split(':')[1])
    hz_log = tmp_path / 'hz.log'
    hz = shared_ros2.start('topic', 'hz', '/diagnostics', log_path=hz_log)
    try:
        # ros2 topic hz prints an average over the messages so far once a second; wait for one
        # taken over at least 5 messages.
        rates = wait_for(lambda: [float(r) for r, n in re.findall(
            r'average rate: ([0-9.]+)\n.*?window: (\d+)', hz_log.read_text(), re.DOTALL)
            if int(n) >= 5], 'ros2 topic hz to average 5 messages')
    finally:
        stop_process(hz, signal.SIGINT)
    assert abs(rates[-1] - configured) < 0.25 * configured, hz_log.read_text()
