"""Issue: the lifecycle node owns the Ollama server. Each transition checked from outside:
psutil process tree, /api/ps, the port; every failure ends in the right state with its message
in /rosout and nothing left running (the start_llm fixture checks that after every test)."""

import os
import signal
import socket
import subprocess

import httpx
import psutil
import pytest

from harness import api_ps
from harness import processes_of
from harness import runners
from harness import servers
from harness import wait_for


def test_node_starts_unconfigured(start_llm):
    llm = start_llm()
    assert llm.client.state() == 'unconfigured'
    assert 'configure' in llm.client.available_transitions()
    assert not processes_of(llm.models_dir, llm.port)


def test_each_transition_does_what_it_says(start_llm):
    llm = start_llm()
    client = llm.client
    assert client.change_state('configure')
    assert client.state() == 'inactive'
    (server,) = servers(llm)
    assert os.getsid(server.pid) == server.pid and server.ppid() == llm.node.pid
    assert api_ps(llm) == [] and not runners(llm)

    assert client.change_state('activate')
    assert client.state() == 'active'
    (loaded,) = api_ps(llm)
    assert loaded['name'] == 'echo:latest' and loaded['expires_at'].startswith('2318')
    (runner,) = runners(llm)
    assert os.getpgid(runner.pid) == server.pid
    assert any('pulling' in line for line in client.log_messages())

    assert client.change_state('deactivate')
    assert client.state() == 'inactive'
    assert api_ps(llm) == []
    assert not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE

    assert client.change_state('cleanup')
    assert client.state() == 'unconfigured'
    assert not processes_of(llm.models_dir, llm.port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(llm.base_url)


@pytest.mark.parametrize('parameters, message', [
    ({'ollama_bin': 'no-such-ollama'}, "ollama_bin 'no-such-ollama' was not found"),
    ({'ollama_bin': '/bin/false'}, "'/bin/false serve' exited with code 1 during start"),
    ({'model': ';rm -rf /'}, "invalid parameter: model ';rm -rf /' is not a valid"),
    ({'model': '../../etc'}, "invalid parameter: model '../../etc' is not a valid"),
    ({'host': '0.0.0.0:11434'}, 'set allow_remote to true'),
])
def test_configure_failures_name_their_cause(start_llm, parameters, message):
    llm = start_llm(**parameters)
    assert not llm.client.change_state('configure')
    assert llm.client.state() == 'unconfigured'
    assert message in llm.client.wait_log('configure failed')


def test_configure_fails_on_a_models_dir_that_cannot_be_created(start_llm, tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    llm = start_llm(models_dir=str(blocker / 'models'))
    assert not llm.client.change_state('configure')
    assert "models_dir '" in llm.client.wait_log('configure failed')


def test_configure_fails_on_a_port_owned_by_something_else(start_llm, ollama_port):
    with socket.socket() as foreign:
        foreign.bind(('127.0.0.1', ollama_port))
        foreign.listen()
        llm = start_llm()
        assert not llm.client.change_state('configure')
        assert 'not Ollama' in llm.client.wait_log('configure failed')


def test_an_existing_server_is_refused_or_adopted_and_left_running(
        start_llm, ollama_port, models_dir):
    env = dict(os.environ, OLLAMA_HOST=f'127.0.0.1:{ollama_port}', OLLAMA_MODELS=models_dir)
    other = subprocess.Popen(['s100-ollama-emulator', 'serve'], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_for(lambda: _answers(f'http://127.0.0.1:{ollama_port}'), 'the other server')
        refusing = start_llm()
        assert not refusing.client.change_state('configure')
        assert 'adopt_existing' in refusing.client.wait_log('configure failed')
        refusing.node.stop()
        adopting = start_llm(adopt_existing=True)
        adopting.activate()
        assert api_ps(adopting)
        assert adopting.client.change_state('deactivate')
        assert adopting.client.change_state('cleanup')
        assert other.poll() is None and api_ps(adopting) == []
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()


def _answers(url):
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_activate_without_pull_missing_fails_and_stays_inactive(start_llm):
    llm = start_llm(pull_missing=False)
    assert llm.client.change_state('configure')
    assert not llm.client.change_state('activate')
    assert llm.client.state() == 'inactive'
    assert 'pull_missing is false' in llm.client.wait_log('activate failed')


def test_activate_refuses_a_model_that_does_not_fit_in_memory(start_llm):
    too_much = psutil.virtual_memory().total // 1024 ** 2 * 2
    llm = start_llm(memory_margin_mb=too_much)
    assert llm.client.change_state('configure')
    assert not llm.client.change_state('activate')
    assert 'not enough memory' in llm.client.wait_log('activate failed')
    assert api_ps(llm) == [] and not runners(llm)


def test_a_load_that_runs_out_of_memory_fails_activate(start_llm):
    llm = start_llm(model='oom:latest')
    assert llm.client.change_state('configure')
    assert not llm.client.change_state('activate')
    assert 'model requires more system memory' in llm.client.wait_log('activate failed')


def test_keep_alive_inactive_keeps_the_model_for_a_while(start_llm):
    llm = start_llm(keep_alive_inactive=600.0)
    llm.activate()
    assert llm.client.change_state('deactivate')
    (loaded,) = api_ps(llm)
    assert not loaded['expires_at'].startswith('2318')


def test_a_killed_server_is_restarted_and_the_model_reloaded(start_llm):
    llm = start_llm()
    llm.activate()
    (server,) = servers(llm)
    server.kill()
    llm.client.wait_log('recovered: server running and model loaded')
    assert llm.client.state() == 'active'
    assert api_ps(llm)[0]['name'] == 'echo:latest'
    assert llm.client.chat('again').result.text == 'user: again\n'


def test_a_killed_runner_is_reloaded(start_llm):
    llm = start_llm()
    llm.activate()
    (runner,) = runners(llm)
    runner.kill()
    llm.client.wait_log('recovered')
    assert llm.client.chat('again').result.text == 'user: again\n'


def test_without_restarts_a_dead_server_takes_the_node_to_unconfigured(start_llm):
    llm = start_llm(restart_on_failure=False)
    llm.activate()
    (server,) = servers(llm)
    server.kill()
    wait_for(lambda: llm.client.state() == 'unconfigured', 'ErrorProcessing -> unconfigured')
    assert any('exited with code' in m for m in llm.client.log_messages())
    wait_for(lambda: not processes_of(llm.models_dir, llm.port), 'no process left')
    assert llm.client.change_state('configure')      # and it can start over


@pytest.mark.parametrize('number', [signal.SIGINT, signal.SIGTERM])
def test_node_exit_with_a_model_loaded_leaves_nothing(start_llm, number):
    llm = start_llm()
    llm.activate()
    assert runners(llm)
    assert llm.node.stop(number) == 0
    assert not processes_of(llm.models_dir, llm.port)


def test_a_sigkilled_node_takes_its_server_along_and_the_next_configure_sweeps(start_llm):
    llm = start_llm()
    llm.activate()
    (runner,) = runners(llm)
    llm.node.process.kill()
    llm.node.process.wait()
    wait_for(lambda: not servers(llm), 'the server to die with the node (PR_SET_PDEATHSIG)')
    assert runner.is_running()          # Ollama's runners outlive their server...
    again = start_llm()
    assert again.client.change_state('configure')
    assert not runner.is_running()      # ...until the next configure sweeps them
    assert 'orphaned runner' in again.client.wait_log('orphaned')


def test_shutdown_from_active(start_llm):
    llm = start_llm()
    llm.activate()
    assert llm.client.change_state('active_shutdown')
    assert llm.client.state() == 'finalized'
    assert not processes_of(llm.models_dir, llm.port)


def test_cycles_leave_no_process_thread_or_descriptor(start_llm):
    llm = start_llm()
    node = psutil.Process(llm.node.pid)

    def cycle():
        for transition in ('configure', 'activate', 'deactivate', 'cleanup'):
            assert llm.client.change_state(transition), transition
        assert not processes_of(llm.models_dir, llm.port)

    # The executor's thread pool starts threads on demand (up to its size) the first times
    # callbacks overlap: measure after a warm-up, so that what remains is what cycles leak.
    for _ in range(WARM_UP):
        cycle()
    threads, descriptors = node.num_threads(), node.num_fds()
    for _ in range(CYCLES - WARM_UP):
        cycle()
    assert node.num_threads() <= threads + POOL_SLACK
    assert node.num_fds() <= descriptors


CYCLES = 100
WARM_UP = 10
POOL_SLACK = 2     # a leak of one thread per cycle would show 90
