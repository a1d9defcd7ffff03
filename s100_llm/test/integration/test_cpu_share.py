"""Issue 18: the model's share of the CPU (threads, cores, nice) and the server's variables
reach the running server and runner, read from /proc; bad values are refused with the reason."""

import json
import os
import pathlib
import random
from typing import Iterator

from action_msgs.msg import GoalStatus
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
import yaml

from conftest import default_parameters
from harness import runner_threads
from harness import runners
from harness import servers
from harness import wait_for


@pytest.mark.real_model
def test_the_share_reaches_the_server_and_runner_and_chats_keep_the_runner(start_llm):
    last_core = (os.cpu_count() or 1) - 1
    # The emulator's default is 2 threads: a chat without num_thread would reload with 2.
    llm = start_llm(model='smollm2:135m', num_thread=1, cpu_cores=f'{last_core}-{last_core}',
                    nice=5, kv_cache_type='q8_0', flash_attention='enabled',
                    env={'OLLAMA_EMULATOR_THREADS': '2', 'OLLAMA_DEBUG': '1'})
    llm.activate()
    [server], [runner] = servers(llm), runners(llm)
    for process in (server, runner):
        assert process.cpu_affinity() == [last_core], process.cmdline()
        assert process.nice() == 5, process.cmdline()
    # On the runner's command line (llama-server) or in its load request (Ollama 0.2x).
    assert runner_threads(llm, runner) == 1
    environ = server.environ()
    assert (environ['OLLAMA_KV_CACHE_TYPE'], environ['OLLAMA_FLASH_ATTENTION'],
            environ['OLLAMA_MAX_LOADED_MODELS'], environ['OLLAMA_DEBUG'],
            environ['OLLAMA_EMULATOR_THREADS']) == ('q8_0', 'true', '1', '1', '2')
    run = llm.client.chat('Say hello.', temperature=0.0, max_tokens=8)
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert [p.pid for p in runners(llm)] == [runner.pid]     # not reloaded by the chat
    # /diagnostics shows the share as the running server has it, and what the model uses.
    shown = llm.client.fresh_statuses(
        lambda s: s['llm: Ollama server'].values and 'model cores' in {
            kv.key for kv in s['llm: Ollama server'].values}, 'the model share')
    share = {kv.key: kv.value for kv in shown['llm: Ollama server'].values}
    assert (share['model threads (num_thread)'], share['model cores'], share['model nice']) == (
        '1', f'{last_core} (1 of {os.cpu_count()})', '5')
    assert float(share['server + runners CPU (% of one core)']) >= 0.0
    assert f'core {last_core} busy (%)' in share
    assert 'model share: 1 threads on cores' in shown['llm: Ollama server'].message


@pytest.mark.parametrize('given', ['command line', 'params file', 'param set'])
def test_a_bare_core_number_is_that_core(start_llm, tmp_path, ollama_port, models_dir, given):
    # Issue 22.11: YAML makes `-p cpu_cores:=0`, a params file's `cpu_cores: 0` and `ros2 param
    # set /llm cpu_cores 0` integers, which the string parameter refused (at startup with a
    # traceback); they are the core's number.
    if given == 'command line':
        llm = start_llm(cpu_cores=0)     # the harness passes -p cpu_cores:=0
    elif given == 'params file':
        params_file = tmp_path / 'robot.yaml'
        params_file.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
            **default_parameters(ollama_port, models_dir), 'cpu_cores': 0}}}))
        assert 'cpu_cores: 0\n' in params_file.read_text()
        llm = start_llm(params_file=str(params_file))
    else:
        llm = start_llm()
        reply = llm.client._call(SetParameters, '/llm/set_parameters', SetParameters.Request(
            parameters=[Parameter('cpu_cores', value=0).to_parameter_msg()]))
        assert reply.results[0].successful, reply.results[0].reason
    llm.activate()
    assert [process.cpu_affinity() for process in servers(llm) + runners(llm)] == [[0], [0]]


def sent_num_thread(requests: pathlib.Path) -> int:
    """The num_thread of the last chat request the node sent (the emulator's request log)."""
    body = json.loads(requests.read_text().splitlines()[-1])['body']
    return json.loads(body)['options']['num_thread']


def threads_shown(llm) -> dict:
    shown = llm.client.fresh_statuses(
        lambda s: 'model threads chosen' in {kv.key for kv in s['llm: Ollama server'].values},
        'the model threads')
    return {kv.key: kv.value for kv in shown['llm: Ollama server'].values}


def test_automatic_num_thread_never_exceeds_the_nodes_affinity(start_llm, tmp_path):
    # Issue 23 item 1: the node started on one core (as `taskset -c N` would) sends 1 thread
    # where the old default sent 4, and says why in the log and the diagnostics.
    last_core = (os.cpu_count() or 1) - 1
    requests = tmp_path / 'requests.jsonl'
    llm = start_llm(preexec=lambda: os.sched_setaffinity(0, {last_core}),
                    env={'OLLAMA_EMULATOR_REQUEST_LOG': str(requests)})
    llm.activate()
    run = llm.client.chat('hello')
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert sent_num_thread(requests) == 1
    why = f'automatic: 1 usable cores: affinity {last_core}'
    assert f'num_thread 1 ({why})' in llm.client.wait_log('num_thread 1 (')
    shown = threads_shown(llm)
    assert (shown['model threads (num_thread)'], shown['model threads chosen']) == ('1', why)


@pytest.fixture
def one_core_quota() -> Iterator[pathlib.Path]:
    """A cgroup with a CPU quota of one core (cgroup v2 cpu.max, else v1's CFS quota); yields
    its cgroup.procs. Skips, saying why, where this process may not create one (not root, a
    read-only /sys/fs/cgroup, no cpu controller)."""
    name = f's100_llm_test_{os.getpid()}_{random.randrange(1 << 30)}'
    unified = pathlib.Path('/sys/fs/cgroup')
    controllers = unified / 'cgroup.subtree_control'
    if controllers.exists() and 'cpu' in controllers.read_text().split():
        group, quota = unified / name, {'cpu.max': '100000 100000'}
    else:
        group, quota = pathlib.Path('/sys/fs/cgroup/cpu') / name, {
            'cpu.cfs_period_us': '100000', 'cpu.cfs_quota_us': '100000'}
    try:
        group.mkdir()
    except OSError as error:
        pytest.skip(f'cannot create a cgroup with a CPU quota here ({group}): {error}')
    try:
        for file, value in quota.items():
            (group / file).write_text(value)
        yield group / 'cgroup.procs'
    finally:
        # rmdir fails while a process of the test is still in the group (the teardown of
        # start_llm, set up after this fixture, has ended them).
        wait_for(lambda: not (group / 'cgroup.procs').read_text().strip(),
                 'the cgroup to be empty')
        group.rmdir()


def test_automatic_num_thread_never_exceeds_a_cgroup_cpu_quota(one_core_quota, start_llm,
                                                               tmp_path):
    # Every core in the affinity, but the cgroup the node (and so the server) runs in may use
    # one core's time: 1 thread, not one per core.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip('one core in this affinity: the quota would not change the thread count')
    requests = tmp_path / 'requests.jsonl'
    llm = start_llm(preexec=lambda: one_core_quota.write_text(str(os.getpid())),
                    env={'OLLAMA_EMULATOR_REQUEST_LOG': str(requests)})
    llm.activate()
    run = llm.client.chat('hello')
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert sent_num_thread(requests) == 1
    line = llm.client.wait_log('num_thread 1 (')
    assert f'cgroup CPU quota 1 cores ({one_core_quota.parent})' in line, line
    assert 'cgroup CPU quota 1 cores' in threads_shown(llm)['model threads chosen']


@pytest.mark.parametrize('parameters, message', [
    ({'cpu_cores': '0-4096'}, 'do not exist (this machine has'),
    ({'cpu_cores': 'all'}, "'all' is not a core id or range"),
    ({'ollama_env': 'PATH=/tmp'}, "'PATH' is not an Ollama variable"),
    ({'ollama_env': 'OLLAMA_MODELS=/tmp'}, 'is set by the node; use the parameter models_dir'),
    ({'cpu_cores': '[0, 1]'}, 'cpu_cores must be a string (got '),
    ({'flash_attention': 'true'}, "flash_attention 'true' must be one of auto, enabled"),
])
def test_bad_shares_and_variables_fail_configure_with_the_reason(start_llm, parameters,
                                                                 message):
    llm = start_llm(**parameters)
    assert not llm.client.change_state('configure')
    assert llm.client.state() == 'unconfigured'
    assert message in llm.client.wait_log('configure failed')
    assert not llm.leftovers()


@pytest.mark.parametrize('name, value, message', [
    ('nice', 20, 'nice'),
    ('nice', -5, 'nice'),
    ('cpu_cores', '9999', 'core(s) 9999 do not exist'),
    ('ollama_env', 'OLLAMA_DEBUG', "'OLLAMA_DEBUG' is not NAME=VALUE"),
    ('num_thread', -1, 'num_thread'),
])
def test_bad_values_are_refused_when_set(start_llm, name, value, message):
    llm = start_llm()
    reply = llm.client._call(SetParameters, '/llm/set_parameters', SetParameters.Request(
        parameters=[Parameter(name, value=value).to_parameter_msg()]))
    assert not reply.results[0].successful
    assert message in reply.results[0].reason, reply.results[0].reason
    assert llm.client._call(SetParameters, '/llm/set_parameters', SetParameters.Request(
        parameters=[Parameter(name, value=type(value)(0) if isinstance(value, int) else '')
                    .to_parameter_msg()])).results[0].successful
