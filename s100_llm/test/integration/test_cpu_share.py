"""Issue 18: the model's share of the CPU (threads, cores, nice) and the server's variables
reach the running server and runner, read from /proc; bad values are refused with the reason."""

import os

from action_msgs.msg import GoalStatus
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter

from harness import runner_threads
from harness import runners
from harness import servers


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


@pytest.mark.parametrize('parameters, message', [
    ({'cpu_cores': '0-4096'}, 'do not exist (this machine has'),
    ({'cpu_cores': 'all'}, "'all' is not a core id or range"),
    ({'ollama_env': 'PATH=/tmp'}, "'PATH' is not an Ollama variable"),
    ({'ollama_env': 'OLLAMA_MODELS=/tmp'}, 'is set by the node; use the parameter models_dir'),
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
