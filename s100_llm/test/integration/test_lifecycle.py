"""Issue: the lifecycle node owns the Ollama server. Each transition checked from outside:
psutil process tree, /api/ps, the port; every failure ends in the right state with its message
in /rosout and nothing left running (the start_llm fixture checks that after every test)."""

import os
import signal
import socket
import subprocess
import time

from action_msgs.msg import GoalStatus
import httpx
from lifecycle_msgs.srv import ChangeState
import psutil
import pytest
from rcl_interfaces.msg import Log
from s100_llm_msgs.action import Chat

from harness import api_ps
from harness import processes_of
from harness import runners
from harness import servers
from harness import TRANSITIONS
from harness import WAIT
from harness import wait_for
from support import log_level


def warnings(client):
    with client._lock:
        return [m.msg for m in client.rosout
                if m.name == client.name and log_level(m.level) >= log_level(Log.WARN)]


def change_state_async(client, transition):
    """Ask for a transition without waiting for it: the future of its ChangeState answer."""
    service = client.node.create_client(ChangeState, f'/{client.name}/change_state')
    assert service.wait_for_service(timeout_sec=WAIT)
    request = ChangeState.Request()
    request.transition.id = TRANSITIONS[transition]
    return service.call_async(request)


def unload_behind_the_nodes_back(llm):
    """What any local process may ask Ollama (no authentication needed)."""
    httpx.post(llm.base_url + '/api/generate', json={'model': 'echo:latest', 'keep_alive': 0},
               timeout=WAIT).raise_for_status()


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
    # What is logged after the signal goes to the console only, not to a /rosout gone invalid.
    assert 'Failed to publish log message to rosout' not in llm.node.output()
    assert 'stopping the Ollama server' in llm.node.output()


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


def test_model_and_chat_settings_apply_at_the_next_activate(start_llm):
    llm = start_llm()
    llm.activate()
    llm.client.set_parameters(model='thinker:latest', max_prompt_chars=5)
    assert llm.client.chat('hello there').result.model == 'echo:latest'   # until then: as before
    assert llm.client.change_state('deactivate') and llm.client.change_state('activate')
    assert [model['name'] for model in api_ps(llm)] == ['thinker:latest']
    assert llm.client.chat('hi').result.model == 'thinker:latest'
    too_long = llm.client.send_chat(Chat.Goal(prompt='hello there'))
    assert too_long.wait_accepted()
    assert too_long.wait_result().error_code == Chat.Result.INVALID_GOAL
    assert 'max_prompt_chars' in too_long.result.error_message
    assert 'max_prompt_chars' in llm.client.wait_log('chat goal rejected')


def test_a_failed_activate_is_fixed_by_setting_the_model(start_llm):
    llm = start_llm(model='nosuch:latest')
    assert llm.client.change_state('configure')
    assert not llm.client.change_state('activate')
    assert 'nosuch:latest' in llm.client.wait_log('activate failed')
    llm.client.set_parameters(model='echo:latest')
    assert llm.client.change_state('activate')
    assert llm.client.chat('again').result.text == 'user: again\n'
    # Nothing was loaded, so nothing is unloaded (no warning about it).
    assert not [m for m in warnings(llm.client) if 'unload' in m]


def test_a_model_expiring_after_deactivate_is_not_a_failure(start_llm):
    llm = start_llm(keep_alive_inactive=1.0)
    llm.activate()
    (runner,) = runners(llm)
    assert llm.client.change_state('deactivate')
    assert str(runner.pid) in llm.client.wait_log('exited while the node was inactive')
    assert llm.client.state() == 'inactive'
    assert not [m for m in llm.client.log_messages() if 'restart' in m or 'error processing' in m]
    assert llm.client.change_state('activate')
    assert llm.client.chat('again').result.text == 'user: again\n'


def test_a_model_unloaded_by_another_client_while_active_is_reloaded(start_llm):
    # One restart allowed: reloads must not spend it, or the second would end the node.
    llm = start_llm(max_restarts=1)
    llm.activate()
    for attempt in range(1, 4):
        (runner,) = runners(llm)
        unload_behind_the_nodes_back(llm)
        wait_for(lambda: len([m for m in llm.client.log_messages()
                              if m.startswith("recovered: model 'echo:latest' reloaded")])
                 == attempt, f'reload {attempt}')
        assert runner.pid not in [r.pid for r in runners(llm)]
    assert 'no restart counted' in llm.client.wait_log('reloading it')
    assert llm.client.state() == 'active'
    assert llm.client.chat('again').result.text == 'user: again\n'


def test_a_reload_in_progress_is_reported_as_such(start_llm):
    llm = start_llm(env={'OLLAMA_EMULATOR_LOAD_DELAY': '8'})
    llm.activate()
    unload_behind_the_nodes_back(llm)
    llm.client.fresh_statuses(lambda s: 'recovering' in s['llm: Model'].message,
                              'the Model status to say it is recovering')
    during = llm.client.send_chat(Chat.Goal(prompt='during'))
    assert during.wait_accepted()
    assert during.wait_result().error_code == Chat.Result.NOT_SERVING
    assert during.status == GoalStatus.STATUS_ABORTED
    assert 'recovering (state: active)' in during.result.error_message
    reason = llm.client.wait_log('chat goal rejected')
    assert 'recovering (state: active)' in reason and 'reloading the model' in reason
    llm.client.wait_log("recovered: model 'echo:latest' reloaded")
    assert llm.client.chat('after').result.text == 'user: after\n'


def test_a_deactivate_that_cannot_reach_the_server_still_stops_serving(start_llm):
    # The server is frozen: deactivate's keep-alive request times out, bounded by stop_timeout
    # (not load_timeout: it only changes a loaded model's expiry).
    llm = start_llm(keep_alive_inactive=600.0, load_timeout=600.0, stop_timeout=0.5)
    llm.activate()
    (server,) = servers(llm)
    server.suspend()
    assert llm.client.change_state('deactivate', timeout=30.0)
    assert llm.client.state() == 'inactive'
    assert 'unload: ' in llm.client.wait_log('unload: ')
    refused = llm.client.send_chat(Chat.Goal(prompt='after'))
    assert refused.wait_accepted()
    assert refused.wait_result().error_code == Chat.Result.NOT_SERVING
    assert 'not active (state: inactive)' in llm.client.wait_log('chat goal rejected')


def test_an_unload_the_server_does_not_answer_is_bounded_by_stop_timeout(start_llm):
    # Issue 22 item 8: the unload request used load_timeout (here 600 s) and held deactivate.
    stop_timeout = 0.5
    llm = start_llm(load_timeout=600.0, stop_timeout=stop_timeout)
    llm.activate()
    (server,) = servers(llm)
    server.suspend()
    asked = time.monotonic()
    # Liveness: the unload request and its confirmation are each bounded by stop_timeout;
    # the rest is the transition's own work and the service round trip on a loaded machine.
    assert llm.client.change_state('deactivate', timeout=30 + 3 * stop_timeout)
    print(f'deactivate answered {time.monotonic() - asked:.2f} s after the server froze')
    assert llm.client.state() == 'inactive'
    assert 'did not answer in time' in llm.client.wait_log('unload: ')


def test_transitions_run_during_a_restart_backoff(start_llm):
    llm = start_llm(restart_backoff=600.0)
    llm.activate()
    (server,) = servers(llm)
    server.kill()
    llm.client.wait_log('restarting in 600 s')
    assert llm.client.change_state('deactivate', timeout=WAIT)
    assert llm.client.change_state('cleanup', timeout=WAIT)
    assert llm.client.state() == 'unconfigured'
    assert llm.client.change_state('configure', timeout=WAIT)
    llm.client.wait_log('restart abandoned')


@pytest.mark.parametrize('number', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_long_load_stops_the_node_at_once(start_llm, number):
    llm = start_llm(env={'OLLAMA_EMULATOR_LOAD_DELAY': '600'})
    assert llm.client.change_state('configure')
    activating = change_state_async(llm.client, 'activate')
    llm.client.wait_log("pulled 'echo:latest'")
    asked = time.monotonic()
    assert llm.node.stop(number) == 0
    print(f'exit {time.monotonic() - asked:.2f} s after {signal.Signals(number).name} '
          'during a load')
    assert not activating.done() or not activating.result().success
    assert not processes_of(llm.models_dir, llm.port)
    assert 'Failed to publish log message to rosout' not in llm.node.output()


def test_lifecycle_services_answer_during_a_long_load(start_llm):
    llm = start_llm(env={'OLLAMA_EMULATOR_LOAD_DELAY': '20'})
    assert llm.client.change_state('configure')
    activating = change_state_async(llm.client, 'activate')
    llm.client.wait_log("pulled 'echo:latest'")
    asked = time.monotonic()
    assert llm.client.state() == 'activating'
    answered = time.monotonic()
    assert 'transition_success' in llm.client.available_transitions()
    assert not activating.done()        # the load is still in progress
    print(f'get_state answered in {(answered - asked) * 1000:.1f} ms during a load')
    wait_for(activating.done, 'the activate answer')
    assert activating.result().success and llm.client.state() == 'active'


@pytest.mark.parametrize('label, transition', [('', 'activate'), ('deactivate', None),
                                               ('', 'active_shutdown')])
def test_an_invalid_transition_request_is_refused_and_the_node_lives_on(
        start_llm, label, transition):
    llm = start_llm()
    request = ChangeState.Request()
    request.transition.label = label
    if transition:
        request.transition.id = TRANSITIONS[transition]
    reply = llm.client._call(ChangeState, '/llm/change_state', request)
    assert not reply.success
    assert 'not valid in state' in llm.client.wait_log('change_state refused')
    assert llm.node.process.poll() is None
    assert llm.client.state() == 'unconfigured'
    assert llm.client.change_state('configure')


def test_a_hung_server_fails_running_goals_and_is_restarted(start_llm):
    llm = start_llm(model='endless:latest', stop_timeout=0.5, stream_timeout=600.0,
                    env={'OLLAMA_EMULATOR_TOKEN_RATE': '50'})
    llm.activate()
    (server,) = servers(llm)
    run = llm.client.send_chat(Chat.Goal(prompt='go', max_tokens=8000))
    assert run.wait_accepted()
    wait_for(lambda: run.feedback, 'streaming')
    server.suspend()
    frozen = time.monotonic()
    result = run.wait_result()
    print(f'goal aborted {time.monotonic() - frozen:.1f} s after the server froze')
    assert run.status == GoalStatus.STATUS_ABORTED
    assert 'has not answered' in result.error_message and '(hung)' in result.error_message
    llm.client.wait_log('recovered: server running and model loaded')
    assert server.pid not in [s.pid for s in servers(llm)]
    assert llm.client.state() == 'active'
    assert llm.client.chat('again', max_tokens=3).result.text == 'tok0 tok1 tok2 '
