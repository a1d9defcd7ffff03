"""Serving against the emulator binary: real processes, HTTP and signals, no ROS."""

import dataclasses
import os
import signal
import socket
import threading
from typing import Optional

import psutil
import pytest

from s100_llm.core.config import ModelSettings
from s100_llm.core.config import ServerSettings
from s100_llm.core.server import port_is_free
from s100_llm.core.serving import Failure
from s100_llm.core.serving import Serving
from s100_llm.core.serving import ServingError
from s100_llm.core.serving import ServingState
from s100_llm.core.threads import format_cores
from support import free_port
from support import RecordedLog
from support import wait_for
from support import with_generation

EMULATOR = 's100-ollama-emulator'
MODEL = 'echo:latest'


@dataclasses.dataclass
class Setup:
    serving: Serving
    log: RecordedLog
    server: ServerSettings
    models_dir: str
    model: ModelSettings

    def start(self) -> None:
        with self.serving.transition('configure'):
            self.serving.start(self.server, self.models_dir, self.model)

    def activate(self) -> None:
        with self.serving.transition('activate', about_model=True):
            self.serving.activate()


def failure_seen(serving: Serving) -> Optional[Failure]:
    seen = serving.check()
    assert seen is not None     # no step holds the lock, a server runs
    return seen.failure


@pytest.fixture
def setup(tmp_path):
    made = []

    def make(ollama_env: str = '', **model) -> Setup:
        log = RecordedLog()
        server = ServerSettings(host=f'127.0.0.1:{free_port()}', ollama_bin=EMULATOR,
                                start_timeout=30, stop_timeout=2,
                                ollama_env=with_generation(ollama_env))
        values = {'model': MODEL, 'memory_margin_mb': 0, 'load_timeout': 60}
        values.update(model)
        made.append(Setup(Serving(log), log, server, str(tmp_path / 'models'),
                          ModelSettings(**values)))
        return made[-1]

    yield make
    for each in made:
        each.serving.release()


def test_a_snapshot_says_whether_chats_are_served_and_why_not():
    loaded = ServingState(model_loaded=True)
    assert loaded.in_lifecycle('active').serving
    assert loaded.in_lifecycle('inactive').not_serving_reason == \
        'the node is not active (state: inactive)'
    recovering = dataclasses.replace(loaded, recovering='the server died; restarting')
    assert recovering.in_lifecycle('active').not_serving_reason == \
        'the node is recovering (state: active): the server died; restarting'
    failed = ServingState(server_error='the server exited with code 1')
    assert failed.in_lifecycle('active').not_serving_reason == \
        'the model is not loaded (state: active): the server exited with code 1'
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.model_loaded = False     # a snapshot never changes under its reader


def test_start_load_unload_stop_publish_each_change(setup):
    each = setup()
    serving = each.serving
    assert serving.state.server is None and serving.state.engine is None
    each.start()
    started = serving.state
    assert started.server is not None and started.server.running
    assert started.models_dir == each.models_dir and started.model == MODEL
    assert started.engine is not None and not started.model_loaded
    each.activate()
    loaded = serving.state
    assert loaded.model_loaded and 'completion' in loaded.capabilities
    assert loaded.context_length > 0
    (runner_pid,) = loaded.runner_pids
    assert psutil.pid_exists(runner_pid)
    assert not started.model_loaded     # the earlier snapshot is unchanged
    with serving.transition('deactivate', about_model=True):
        serving.unload()
    assert not serving.state.model_loaded and serving.state.runner_pids == ()
    assert not psutil.pid_exists(runner_pid) or \
        psutil.Process(runner_pid).status() == psutil.STATUS_ZOMBIE
    with serving.transition('cleanup'):
        serving.stop()
    assert serving.state.server is None and serving.state.engine is None
    assert port_is_free('127.0.0.1', int(each.server.host.rsplit(':', 1)[1]))


def test_a_pull_publishes_its_progress(setup):
    each = setup()
    seen = []
    each.serving.log = lambda level, line: seen.append(each.serving.state.pull_progress) \
        if line.startswith('pulling') else None
    each.start()
    each.activate()
    assert seen and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    assert each.serving.state.pull_progress is None


def test_a_models_dir_that_is_not_a_directory_fails_configure_by_name(setup, tmp_path):
    each = setup()
    blocker = tmp_path / 'file'
    blocker.write_text('')
    each.models_dir = str(blocker)
    with pytest.raises(ServingError, match=f"configure failed: models_dir '{blocker}'"):
        each.start()
    assert each.serving.state.server is None
    assert each.serving.state.server_error.startswith('configure failed: models_dir')


def test_a_port_taken_by_another_program_fails_configure_and_leaves_nothing(setup):
    each = setup()
    host, port = each.server.host.rsplit(':', 1)
    with socket.socket() as other:
        other.bind((host, int(port)))
        other.listen()
        with pytest.raises(ServingError, match=f'configure failed: port {port}'):
            each.start()
    assert each.serving.state.server is None and each.serving.state.engine is None


def test_a_model_that_does_not_fit_in_memory_is_not_loaded(setup):
    each = setup(memory_margin_mb=10 ** 9)
    each.start()
    with pytest.raises(ServingError, match=f"activate failed: not enough memory for '{MODEL}'"):
        each.activate()
    state = each.serving.state
    assert not state.model_loaded and state.runner_pids == ()
    assert state.model_error.startswith('activate failed: not enough memory')
    assert not each.serving.wants_model()


def test_a_missing_model_without_pull_names_the_command_to_run(setup):
    each = setup(pull_missing=False)
    each.start()
    with pytest.raises(ServingError, match=f'pull_missing is false; pull it: ollama pull {MODEL}'):
        each.activate()


def test_a_runner_lost_while_active_is_a_failure_and_while_inactive_an_unload(setup):
    each = setup(keep_alive_inactive=600)
    each.start()
    each.activate()
    (runner,) = each.serving.state.runner_pids
    os.kill(runner, signal.SIGKILL)
    seen = wait_for(lambda: failure_seen(each.serving), 'the lost runner')
    assert seen.model_only and f'(pid {runner}) exited' in seen.problem
    each.serving.reload(seen)
    (reloaded,) = each.serving.state.runner_pids
    with each.serving.transition('deactivate', about_model=True):
        each.serving.unload()       # kept loaded for keep_alive_inactive
    assert each.serving.state.runner_pids == (reloaded,)
    os.kill(reloaded, signal.SIGKILL)
    wait_for(lambda: failure_seen(each.serving) is None and each.serving.state.runner_pids == (),
             'the runner forgotten')
    assert 'exited while the node was inactive' in each.log.text()


def test_exit_during_a_long_load_stops_the_server_and_the_load_gives_way(setup):
    each = setup(ollama_env='OLLAMA_EMULATOR_LOAD_DELAY=600')
    each.start()
    server_pid = each.serving.state.server.pid
    outcome = []

    def activate() -> None:
        try:
            each.activate()
        except ServingError as error:
            outcome.append(str(error))
    loading = threading.Thread(target=activate)
    loading.start()
    wait_for(lambda: f"pulled '{MODEL}'" in each.log.text(), 'the pull to finish')
    each.serving.exit_now()
    loading.join()
    assert outcome and outcome[0].endswith('(the node is exiting)')
    assert each.serving.state.server is None
    assert not psutil.pid_exists(server_pid)
    with pytest.raises(ServingError, match='configure refused: the node is exiting'):
        each.start()


def test_more_threads_than_cores_is_warned_about_at_load(setup):
    cores = len(os.sched_getaffinity(0))
    fitting = setup(num_thread=cores)
    fitting.start()
    fitting.activate()
    assert 'exceeds' not in fitting.log.text()
    beyond = setup(num_thread=cores + 1)
    beyond.start()
    beyond.activate()
    affinity = format_cores(os.sched_getaffinity(0))
    assert ('info', f'num_thread {cores + 1} (set: {cores} usable cores: affinity '
                    f'{affinity})') in beyond.log
    assert ('warn', f'num_thread {cores + 1} exceeds the {cores} core(s) the model may use '
                    f'(affinity {affinity}): its threads wait for each other and take every '
                    f'core; set num_thread to at most {cores}, or 0 (automatic)') in beyond.log


def test_automatic_num_thread_is_resolved_sent_and_published(setup):
    # num_thread 0 is never sent to Ollama (its runner would take one thread per core it
    # sees): the node sends the usable cores, at most 4, and says why.
    each = setup(num_thread=0)
    each.start()
    each.activate()
    usable = len(os.sched_getaffinity(0))
    expected = min(4, usable)
    why = (f'automatic: {usable} usable cores: affinity '
           f'{format_cores(os.sched_getaffinity(0))}')
    assert ('info', f'num_thread {expected} ({why})') in each.log
    assert each.serving.state.engine.model_options == {'num_thread': expected}
    assert (each.serving.state.num_thread, each.serving.state.num_thread_why) == (expected, why)
    assert 'exceeds' not in each.log.text()
