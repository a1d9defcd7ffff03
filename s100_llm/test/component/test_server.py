"""OllamaServer against the emulator binary: real processes, signals and ports."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest

from s100_llm.core.config import ServerSettings
from s100_llm.core.engine import OllamaEngine
from s100_llm.core.server import bounded_lines
from s100_llm.core.server import is_runner
from s100_llm.core.server import log_level
from s100_llm.core.server import OllamaServer
from s100_llm.core.server import port_is_free
from s100_llm.core.server import runs_blob
from s100_llm.core.server import ServerError
from support import free_port
from support import RecordedLog
from support import wait_for
from support import with_generation

EMULATOR = 's100-ollama-emulator'


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(models_dir=None, **settings):
        values = {'host': f'127.0.0.1:{free_port()}', 'ollama_bin': EMULATOR,
                  'start_timeout': 30, 'stop_timeout': 2}
        values.update(settings)
        values['ollama_env'] = with_generation(values.get('ollama_env', ''))
        server = OllamaServer(ServerSettings(**values), models_dir or str(tmp_path / 'models'),
                              RecordedLog())
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.adopted = False
        server.stop()


def test_start_spawns_its_own_session_with_an_explicit_environment(make_server, monkeypatch):
    monkeypatch.setenv('S100_TEST_SECRET', 'must-not-leak')
    # A robot behind a proxy: the server needs it to pull models.
    monkeypatch.setenv('HTTPS_PROXY', 'http://127.0.0.1:3128')
    server = make_server()
    server.start()
    process = psutil.Process(server.pid)
    assert os.getsid(server.pid) == server.pid          # own session and process group
    assert process.ppid() == os.getpid()                # no shell in between
    assert process.cmdline()[-1] == 'serve'
    environ = process.environ()
    assert 'S100_TEST_SECRET' not in environ
    assert environ['HTTPS_PROXY'] == 'http://127.0.0.1:3128'
    assert environ['OLLAMA_HOST'] == f'{server.host}:{server.port}'
    assert environ['OLLAMA_MODELS'] == server.models_dir
    assert 'Listening on' in server.log.text()


def test_stop_ends_server_and_runner_and_frees_the_port(make_server):
    server = make_server()
    server.start()
    engine = OllamaEngine(server.base_url, 30)
    engine.pull('echo', lambda *_: None)
    engine.load('echo')
    runners = server.runners()
    assert len(runners) == 1
    server.stop()
    engine.close()
    assert not any(p.is_running() for p in runners)
    assert port_is_free(server.host, server.port)


def test_a_server_ignoring_sigterm_is_killed_with_its_group(make_server):
    server = make_server(stop_timeout=0.5, ollama_env='OLLAMA_EMULATOR_IGNORE_SIGTERM=1')
    server.start()
    pid = server.pid
    server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert 'ignored SIGTERM' in server.log.text()


def test_an_existing_server_is_adopted_only_when_allowed(make_server):
    first = make_server()
    first.start()
    refused = make_server(host=first.settings.host)
    with pytest.raises(ServerError, match='adopt_existing'):
        refused.start()
    adopter = make_server(host=first.settings.host, adopt_existing=True)
    adopter.start()
    assert adopter.adopted and adopter.pid is None
    adopter.stop()
    assert first.reachable()        # an adopted server is left running


def test_a_foreign_program_on_the_port_is_named(make_server):
    with socket.socket() as foreign:
        foreign.bind(('127.0.0.1', 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        with pytest.raises(ServerError, match='not Ollama'):
            make_server(host=f'127.0.0.1:{port}').start()


def test_missing_binary(make_server):
    with pytest.raises(ServerError, match="ollama_bin 'no-such-ollama' was not found"):
        make_server(ollama_bin='no-such-ollama').start()


def test_a_server_that_exits_during_start_leaves_nothing(make_server, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    server = make_server(models_dir=str(blocker / 'models'))
    with pytest.raises(ServerError, match='exited with code 1 during start'):
        server.start()
    assert server.process is None and 'Error: mkdir' in server.log.text()


def test_a_server_that_never_answers_is_stopped(make_server):
    server = make_server(start_timeout=0.5, ollama_env='OLLAMA_EMULATOR_START_DELAY=30')
    with pytest.raises(ServerError, match='did not answer .* within start_timeout 0.5 s'):
        server.start()
    assert server.process is None and port_is_free(server.host, server.port)


def test_orphaned_runners_of_a_killed_server_are_swept_on_start(make_server):
    server = make_server()
    server.start()
    engine = OllamaEngine(server.base_url, 30)
    engine.pull('echo', lambda *_: None)
    engine.load('echo')
    engine.close()
    (runner,) = server.runners()
    os.kill(server.pid, signal.SIGKILL)
    server.process.wait()
    wait_for(lambda: runner.ppid() != server.pid, 'the runner to be orphaned')
    server.process = None
    again = make_server(host=server.settings.host, models_dir=server.models_dir)
    again.start()
    wait_for(lambda: not runner.is_running(), 'the orphan to be swept')
    assert 'orphaned runner' in again.log.text()


def test_a_server_started_from_a_thread_outlives_the_thread(make_server):
    # Issue 23 item 6: PR_SET_PDEATHSIG follows the thread that forked the server; supervision
    # restarts it from its own thread, which the node stops first at exit.
    server = make_server()
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
    wait_for(lambda: not os.path.exists(f'/proc/self/task/{starter.native_id}'),
             'the thread to be gone from the kernel')
    # The parent-death signal is sent as the thread exits: a server that answers after that
    # has not received it (a killed one runs no more code; its socket would only accept).
    assert server.reachable(timeout=5.0)
    server.stop()
    assert 'after SIGTERM (code 0)' in server.log.text()


def test_the_server_dies_with_its_owner(tmp_path):
    port = free_port()
    owner = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f"""
        import time
        from s100_llm.core.config import ServerSettings
        from s100_llm.core.server import OllamaServer
        server = OllamaServer(ServerSettings(host='127.0.0.1:{port}', ollama_bin='{EMULATOR}'),
                              '{tmp_path}/models', lambda level, line: None)
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    server_pid = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    wait_for(lambda: not psutil.pid_exists(server_pid)
             or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE,
             'the server to die with the process that started it')
    wait_for(lambda: port_is_free('127.0.0.1', port), 'the port to be free')


def test_servers_sharing_a_models_dir_count_and_stop_only_their_own_runners(make_server,
                                                                            tmp_path):
    models_dir = str(tmp_path / 'shared')
    first, second = make_server(models_dir=models_dir), make_server(models_dir=models_dir)
    first.start()
    second.start()
    for server in (first, second):
        engine = OllamaEngine(server.base_url, 30)
        engine.pull('echo', lambda *_: None)
        engine.load('echo')
        engine.close()
    (first_runner,), (second_runner,) = first.runners(), second.runners()
    assert first_runner.pid != second_runner.pid
    assert first_runner.ppid() == first.pid and second_runner.ppid() == second.pid
    first.stop()
    assert not first_runner.is_running() or first_runner.status() == psutil.STATUS_ZOMBIE
    assert second_runner.is_running() and second.runners() == [second_runner]
    # Starting again sweeps orphans only: the other server's runner is not one.
    first.start()
    assert second_runner.is_running() and 'orphaned' not in first.log.text()


@pytest.mark.parametrize('arguments, runner', [
    # Ollama 0.2x: the server's own program.
    (['runner', '--model', '{blob}', '--port', '41234'], True),
    # Ollama 0.30+: llama.cpp's server, threads on its command line.
    (['--model', '{blob}', '--port', '41234', '-t', '2', '--ctx-size', '4096'], True),
    # Ollama 0.2x's discovery runner at every start: no model, never a model's runner.
    (['runner', '--ollama-engine', '--port', '41234'], False),
    # Another models dir's runner.
    (['runner', '--model', '/elsewhere/blobs/sha256-ab', '--port', '41234'], False),
])
def test_runners_are_told_by_their_model_blob_not_their_program(tmp_path, arguments, runner):
    models_dir = str(tmp_path / 'models')
    blob = os.path.join(models_dir, 'blobs', 'sha256-ab')
    command = [sys.executable, '-c', 'import time; time.sleep(600)'] + [
        argument.format(blob=blob) for argument in arguments]
    process = subprocess.Popen(command)
    try:
        found = psutil.Process(process.pid)
        # Between fork and exec the child still shows the test's command line.
        wait_for(lambda: found.cmdline() == command, 'the process to run its command')
        assert is_runner(found, models_dir) is runner
        assert runs_blob(found, 'sha256-ab') is ('--model' in arguments)
    finally:
        process.kill()
        process.wait()


def test_the_sweep_leaves_a_runner_whose_parent_is_alive(make_server, tmp_path):
    """A process serving the models dir that some live program started (not an orphan)."""
    models_dir = tmp_path / 'models'
    blob = models_dir / 'blobs' / 'sha256-0000'
    not_orphaned = subprocess.Popen(
        [sys.executable, '-c', 'import time; time.sleep(600)', '--model', str(blob)])
    try:
        server = make_server(models_dir=str(models_dir))
        assert server.sweep_orphans() == 0
        assert not_orphaned.poll() is None
    finally:
        not_orphaned.kill()
        not_orphaned.wait()


def test_bounded_lines_cut_a_long_line_and_drop_its_rest(tmp_path):
    path = tmp_path / 'output'
    path.write_bytes(b'short\n' + b'x' * 100 + b'\nnext\n' + b'y' * 25)
    with open(path, 'rb') as stream:
        assert list(bounded_lines(stream, 10)) == [
            (b'short\n', False), (b'x' * 10, True), (b'next\n', False), (b'y' * 10, True)]


@pytest.mark.parametrize('line, level', [
    ('0.01.839.525 I slot print_timing: id  0 | task 0 | prompt eval time = 103.43 ms', 'debug'),
    ('0.00.547.379 I slot get_availabl: id  0 | task -1 | selected slot by LRU', 'debug'),
    ('0.00.900.000 I srv  log_server_r: request: POST /completion 127.0.0.1 200', 'debug'),
    ('0.02.816.263 W slot   operator(): id  0 | task 4 | n_past was set to 9', 'debug'),
    ('0.00.007.115 I srv    load_model: loading model', 'info'),
    ('I srv          init: model loaded', 'info'),
    ('0.00.100.000 E slot launch_slot_: failed to process task', 'error'),
    ('time=2026 level=ERROR source=sched.go msg="runner exited"', 'error'),
    ('Error: listen tcp 127.0.0.1:11434: bind: address already in use', 'error'),
    ('time=2026 level=INFO source=emulator msg="llama runner started"', 'info'),
])
def test_per_request_runner_lines_are_debug_and_errors_stay_errors(line, level):
    assert log_level(line, 'info') == level


# What a real `ollama serve` 0.24 writes on stderr (Go slog) and its runner on every load of
# SmolLM2 (llama.cpp's loader, ~210 lines), in their real shapes.
SERVER_LINES = [
    ('time=2026-12-05T10:14:02.113Z level=INFO source=routes.go:1331 msg="Listening on '
     '127.0.0.1:11434 (version 0.24.0)"', 'info'),
    ('time=2026-12-05T10:14:02.120Z level=WARN source=cloud.go:58 msg="cloud features '
     'unavailable" error="dial tcp: lookup ollama.com: no such host"', 'warn'),
    ('time=2026-12-05T10:14:09.512Z level=ERROR source=sched.go:489 msg="error loading llama '
     'server" error="llama runner process has terminated: exit status 2"', 'error'),
    ('time=2026-12-05T10:14:05.004Z level=DEBUG source=cache.go:104 msg="loading cache slot" '
     'id=0 cache=77 prompt=94 used=77 remaining=17', 'debug'),
    ('time=2026-12-05T10:14:05.004Z level=TRACE source=runner.go:600 msg="forwardBatch"',
     'debug'),
    ('time=2026-12-05T10:14:03.001Z level=INFO source=server.go:1289 msg="llama runner started '
     'in 0.41 seconds"', 'info'),
    ('time=2026-12-05T10:14:03.001+00:00 level=WARN source=emulator msg="received SIGTERM: '
     'ignored (injected fault)"', 'warn'),
    ('INFO [main] build info | build=3871 commit="63424972" tid="27324"', 'info'),
    ('WARN [main] something odd | tid="27324"', 'warn'),
]
LOADER_LINES = [
    'llama_model_loader: loaded meta data with 33 key-value pairs and 272 tensors from '
    '/home/robot/.ollama/models/blobs/sha256-5e0fcd2a5c2bd6bc2b0ba5d2e8e1c6e0f0a1d8b3 '
    '(version GGUF V3 (latest))',
    'llama_model_loader: Dumping metadata keys/values. Note: KV overrides do not apply in this '
    'output.',
    'llama_model_loader: - kv   0:                       general.architecture str              '
    '= llama',
    'llama_model_loader: - kv  37:                    tokenizer.chat_template str              '
    "= {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' "
    "%}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM...",
    # A key dump that says "error" is the model's metadata, not a failure.
    'llama_model_loader: - kv  12:                  general.description str              = '
    'Fewer errors, failed less: unable to hallucinate',
    'llama_model_loader: - type  f32:   61 tensors',
    'llama_model_loader: - type q8_0:  211 tensors',
    'print_info: file format = GGUF V3 (latest)',
    'print_info: file type   = Q8_0',
    'print_info: file size   = 138.65 MiB (8.50 BPW)',
    'load: special tokens cache size = 17',
    'load: token to piece cache size = 0.3170 MB',
    "print_info: EOG token        = 2 '<|im_end|>'",
    'load_tensors: loading model tensors, this can take a while... (mmap = true)',
    'load_tensors:   CPU_Mapped model buffer size =   138.65 MiB',
    'llama_context: constructing llama_context',
    'llama_context: n_ctx         = 4096',
    'llama_context:        CPU  output buffer size =     0.19 MiB',
    'llama_kv_cache_unified:        CPU KV buffer size =    90.00 MiB',
    'llama_context:        CPU compute buffer size =   168.01 MiB',
    'llama_context: graph nodes  = 966',
    "llm_load_vocab: missing or unrecognized pre-tokenizer type, using: 'default'",
    'llm_load_print_meta: format           = GGUF V3 (latest)',
    'llama_new_context_with_model: n_ctx      = 8192',
    'load_backend: loaded CPU backend from /usr/lib/ollama/libggml-cpu-haswell.so',
    'ggml_backend_load_best: /usr/lib/ollama/libggml-cpu-icelake.so score: 0',
    'system_info: n_threads = 2 / 2 | CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 |',
    # llama-server (Ollama 0.30 and later) prefixes time and level.
    '0.00.189.951 I print_info: EOG token        = 128001',
    '0.00.189.952 I load_tensors: loading model tensors, this can take a while... (mmap = true)',
    '0.00.190.100 W llama_context: n_ctx_seq (4096) < n_ctx_train (8192) -- the full capacity '
    'of the model will not be utilized',
    '0.00.100.000 I llama_model_loader: - kv  12: general.description str = no errors',
]
LOADER_FAILURES = [
    'llama_model_load: error loading model: error loading model vocabulary: unknown '
    "pre-tokenizer type: 'smollm9'",
    'llama_load_model_from_file: failed to load model',
    'llama_model_load_from_file_impl: failed to load model',
    'gguf_init_from_file_impl: failed to read magic',
    'ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 1610612768',
    'llama_init_from_model: cannot allocate the KV cache: out of memory',
    '0.00.120.000 E llama_model_load: error loading model: missing tensor token_embd.weight',
]


@pytest.mark.parametrize('line, level', SERVER_LINES)
def test_ollamas_levels_become_ros_levels(line, level):
    assert log_level(line, 'info') == level


@pytest.mark.parametrize('line', LOADER_LINES)
def test_the_runners_loader_chatter_is_debug(line):
    assert log_level(line, 'info') == 'debug'


@pytest.mark.parametrize('line', LOADER_FAILURES)
def test_a_loader_line_saying_the_load_failed_is_an_error(line):
    assert log_level(line, 'info') == 'error'


@pytest.mark.parametrize('line', [
    'key clip.vision.image_grid_pinpoints not found in file',
    '[GIN] 2026/12/05 - 10:14:05 | 200 |  1.09s |  127.0.0.1 | POST "/api/chat"',
    'goroutine 1 [running]:',
])
def test_lines_without_a_level_keep_the_streams_default(line):
    assert log_level(line, 'debug') == 'debug'
    assert log_level(line, 'info') == 'info'


def test_the_server_runs_offline_unless_the_cloud_is_allowed(make_server):
    # Checked on the running process: the variable is in the server's own environment.
    offline = make_server()
    offline.start()
    assert psutil.Process(offline.pid).environ()['OLLAMA_NO_CLOUD'] == '1'
    offline.stop()
    allowed = make_server(allow_cloud=True)
    allowed.start()
    assert 'OLLAMA_NO_CLOUD' not in psutil.Process(allowed.pid).environ()


def test_cores_nice_and_variables_reach_the_server_and_its_runner(make_server, monkeypatch):
    # The node's own OLLAMA_EMULATOR_* variables no longer pass: only ollama_env does.
    monkeypatch.setenv('OLLAMA_EMULATOR_TOKEN_RATE', '7')
    last_core = (os.cpu_count() or 1) - 1
    server = make_server(cpu_cores=str(last_core), nice=7, kv_cache_type='q8_0',
                         flash_attention='enabled', max_loaded_models=2,
                         ollama_env="OLLAMA_DEBUG=1 OLLAMA_EMULATOR_THREADS='1'")
    server.start()
    engine = OllamaEngine(server.base_url, 30, num_thread=1)
    engine.pull('smollm2:135m', lambda *_: None)
    engine.load('smollm2:135m')
    processes = [psutil.Process(server.pid)] + server.runners()
    assert len(processes) == 2
    for process in processes:
        assert process.cpu_affinity() == [last_core] and process.nice() == 7
    environ = processes[0].environ()
    assert {name: environ.get(name) for name in (
        'OLLAMA_KV_CACHE_TYPE', 'OLLAMA_FLASH_ATTENTION', 'OLLAMA_MAX_LOADED_MODELS',
        'OLLAMA_DEBUG', 'OLLAMA_EMULATOR_THREADS', 'OLLAMA_EMULATOR_TOKEN_RATE')} == {
        'OLLAMA_KV_CACHE_TYPE': 'q8_0', 'OLLAMA_FLASH_ATTENTION': 'true',
        'OLLAMA_MAX_LOADED_MODELS': '2', 'OLLAMA_DEBUG': '1', 'OLLAMA_EMULATOR_THREADS': '1',
        'OLLAMA_EMULATOR_TOKEN_RATE': None}
    engine.close()


def test_a_share_the_kernel_refuses_fails_the_start_with_the_reason(make_server, monkeypatch):
    # Cores the validation believes in but the kernel does not have (e.g. offline ones).
    monkeypatch.setattr(os, 'cpu_count', lambda: 4096)
    server = make_server(cpu_cores='4000-4001')
    with pytest.raises(ServerError, match=r'could not give the server its share \(cpu_cores '
                                          r"'4000-4001', nice 10\)"):
        server.start()
    assert server.process is None and port_is_free(server.host, server.port)
