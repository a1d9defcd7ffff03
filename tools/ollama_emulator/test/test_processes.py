"""The emulator's process tree and signals, checked with psutil like the node checks them."""

import os
import re
import signal
import socket
import subprocess
from typing import Optional

import httpx
import psutil
import pytest

from emulator_fixtures import runners_of
from emulator_fixtures import wait


def test_runner_is_a_child_in_the_servers_process_group(emulator):
    emulator.client.generate('echo')
    (runner,) = runners_of(emulator)
    assert os.getpgid(runner.pid) == os.getpgid(emulator.process.pid)
    assert any(part.startswith(emulator.models + '/blobs/sha256-') for part in runner.cmdline())
    emulator.client.generate('echo', keep_alive=0)
    wait(lambda: not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE,
         'the runner to exit after unload')


def test_sigterm_kills_runners_and_exits_0_and_a_second_one_is_ignored(emulator):
    emulator.client.generate('echo')
    (runner,) = runners_of(emulator)
    emulator.process.send_signal(signal.SIGTERM)
    emulator.process.send_signal(signal.SIGTERM)
    assert emulator.process.wait(30) == 0
    wait(lambda: not runner.is_running(), 'the runner to be killed')


def test_sigint_behaves_like_sigterm(emulator):
    emulator.client.generate('echo')
    (runner,) = runners_of(emulator)
    emulator.process.send_signal(signal.SIGINT)
    assert emulator.process.wait(30) == 0
    wait(lambda: not runner.is_running(), 'the runner to be killed')


def test_sigkill_of_the_server_orphans_the_runner(emulator):
    emulator.client.generate('echo')
    (runner,) = runners_of(emulator)
    emulator.process.kill()
    emulator.process.wait()
    wait(lambda: runner.ppid() != emulator.process.pid, 'the runner to be reparented')
    assert runner.is_running()  # still holding the model: what the node must sweep
    runner.kill()


def test_ignore_sigterm_fault(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_IGNORE_SIGTERM='1')
    emulator.process.send_signal(signal.SIGTERM)
    wait(lambda: 'ignored (injected fault)' in open(emulator.log.name).read(),
         'the SIGTERM to be logged as ignored')
    assert httpx.get(emulator.url).text == 'Ollama is running'


def test_port_already_in_use(start_emulator, tmp_path):
    first = start_emulator()
    second = subprocess.run(['s100-ollama-emulator', 'serve'], capture_output=True, text=True,
                            env=dict(os.environ, OLLAMA_HOST=f'127.0.0.1:{first.port}',
                                     OLLAMA_MODELS=str(tmp_path / 'other')), timeout=60)
    assert second.returncode == 1
    assert f'listen tcp 127.0.0.1:{first.port}: bind: address already in use' in second.stderr


def test_slow_start_accepts_tcp_before_http(start_emulator):
    emulator = start_emulator(wait=False, OLLAMA_EMULATOR_START_DELAY='2')
    wait(lambda: _connects(emulator.port), 'the port to accept TCP')
    assert 'Listening on' not in open(emulator.log.name).read()
    emulator.wait_ready()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        return True
    except OSError:
        return False


def test_unwritable_models_dir_fails_at_start(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    result = subprocess.run(['s100-ollama-emulator', 'serve'], capture_output=True, text=True,
                            env=dict(os.environ, OLLAMA_HOST='127.0.0.1:1',
                                     OLLAMA_MODELS=str(blocker / 'models')), timeout=60)
    assert result.returncode == 1 and result.stderr.startswith('Error: mkdir')


def threads_of(emulator, runner: psutil.Process) -> Optional[int]:
    """The runner's threads: -t on llama-server's command line (None: not given, the default),
    or the last load request in the log (ollama-runner: threads are not on its command line)."""
    cmdline = runner.cmdline()
    if '-t' in cmdline:
        return int(cmdline[cmdline.index('-t') + 1])
    loads = re.findall(r'NumThreads:(\d+)', emulator.output())
    return int(loads[-1]) if loads else None


@pytest.mark.parametrize('generation', ['llama-server', 'ollama-runner'])
def test_num_thread_of_the_load_starts_the_runner_and_a_different_one_reloads(
        start_emulator, generation):
    emulator = start_emulator(OLLAMA_EMULATOR_THREADS='2', OLLAMA_EMULATOR_RUNNER=generation)
    emulator.pull('echo')
    emulator.client.generate('echo', options={'num_thread': 1})
    (first,) = runners_of(emulator)
    assert threads_of(emulator, first) == 1
    emulator.client.chat('echo', [{'role': 'user', 'content': 'x'}], options={'num_thread': 1})
    assert runners_of(emulator) == [first]
    # Omitted means the default, which differs: Ollama reloads the model with it.
    emulator.client.chat('echo', [{'role': 'user', 'content': 'x'}])
    (second,) = wait(lambda: [r for r in runners_of(emulator) if r.pid != first.pid],
                     'the model to be reloaded')
    # llama-server gets no -t then (its default); the ollama-runner's load request says 2.
    assert threads_of(emulator, second) == (None if generation == 'llama-server' else 2)
    wait(lambda: not first.is_running() or first.status() == psutil.STATUS_ZOMBIE,
         'the first runner to exit')
