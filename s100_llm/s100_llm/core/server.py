"""OllamaServer: start, adopt, watch and stop `ollama serve`, leaving no process behind.

A managed server runs in its own session (so its process group holds it and the runners it
spawns) with an explicit environment, dies with the node (PR_SET_PDEATHSIG, set from a
spawning thread that lives as long as the process), and is stopped with SIGTERM, a grace
period, then SIGKILL of the whole group, then a sweep of orphaned runners
that serve this models directory (Ollama's runners get no parent-death signal and outlive a
SIGKILLed server, holding the model in RAM). Runners are told apart by the process tree: a
server's runners are its descendants, an orphan's parent is init or a subreaper.
"""

import concurrent.futures
import ctypes
import dataclasses
import enum
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple
import urllib.error
import urllib.request

import psutil

from .config import parse_host
from .config import ServerSettings

LogSink = Callable[[str, str], None]  # (level: 'debug'|'info'|'warn'|'error', line)
_PR_SET_PDEATHSIG = 1
# Longest line of the server's output that is logged; the rest of a longer line is dropped.
MAX_LOG_LINE_BYTES = 16384
_libc = ctypes.CDLL(None, use_errno=True)
# Every server is spawned from this one thread, which lives as long as the process:
# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process. A server
# restarted by supervision's thread was SIGKILLed when the node, going down, stopped that thread
# before its own SIGTERM could reach the server. Created at the first spawn; an idle worker
# of a ThreadPoolExecutor never exits before the interpreter does.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                 thread_name_prefix='ollama-spawner')
# Variables the server needs from the node's environment; everything else is left out.
# The proxy variables are for the server's pulls from the registry, as Ollama documents them
# (Go never proxies requests to loopback, so the node's and the runners' traffic stays direct).
_PASSED_THROUGH = ('PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'LD_LIBRARY_PATH',
                   'CUDA_VISIBLE_DEVICES', 'HIP_VISIBLE_DEVICES', 'HTTPS_PROXY', 'https_proxy',
                   'HTTP_PROXY', 'http_proxy', 'NO_PROXY', 'no_proxy')


class ServerError(RuntimeError):
    """The server could not be started, adopted or stopped; the message says why."""


class PortOwner(enum.Enum):
    FREE = 'free'
    OLLAMA = 'ollama'
    FOREIGN = 'foreign'


# The probe talks to the Ollama host directly: proxy variables in the node's environment
# (http_proxy, ALL_PROXY, ...) would send it to the proxy, which answers instead of Ollama.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def probe(base_url: str, timeout: float = 1.0) -> PortOwner:
    """Who answers on base_url: nobody, Ollama (GET / says so), or something else."""
    try:
        with _DIRECT.open(base_url + '/', timeout=timeout) as reply:
            body = reply.read(64)
        return PortOwner.OLLAMA if body.startswith(b'Ollama is running') else PortOwner.FOREIGN
    except urllib.error.HTTPError:
        return PortOwner.FOREIGN
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, 'reason', error)
        if isinstance(reason, ConnectionRefusedError):
            return PortOwner.FREE
        if isinstance(reason, (socket.timeout, TimeoutError, ConnectionResetError)):
            return PortOwner.FOREIGN
        return PortOwner.FREE


def bounded_lines(stream: BinaryIO, limit: int) -> Iterator[Tuple[bytes, bool]]:
    """The lines of stream as (at most `limit` bytes, cut), holding at most `limit` bytes.

    A longer line is handed out once, cut to its first `limit` bytes (cut=True), and the rest
    of it is read in bounded pieces and dropped: a server printing without line breaks cannot
    grow the node.
    """
    dropping = False
    while True:
        piece = stream.readline(limit)
        if not piece:
            return
        complete = piece.endswith(b'\n')
        if dropping:
            dropping = not complete
            continue
        if not complete and len(piece) >= limit:
            dropping = True
            yield piece, True
        else:
            yield piece, False


# Go slog's level, as Ollama's server and its 0.2x runner print it ("time=... level=WARN
# source=... msg=..."); TRACE is Ollama's own level below DEBUG.
_SLOG_LINE = re.compile(r'^time=\S+ level=([A-Z]+)')
# The level of the old runner's C++ server lines ("INFO [main] build info | ...").
_BRACKET_LINE = re.compile(r'^(INFO|WARN|ERROR|DEBUG|VERB) \[')
_TO_ROS = {'TRACE': 'debug', 'DEBUG': 'debug', 'VERB': 'debug', 'INFO': 'info', 'WARN': 'warn',
           'ERROR': 'error'}
# A llama.cpp log line (the runner's): "[time ]L module function: text", L in I W E D.
_LLAMA_CPP_LINE = re.compile(r'^(?:[\d.]+ )?([IWED]) (\w+)\s+(\S+?):')
# What llama.cpp's server logs for every request (slot use, timings, the HTTP request).
_PER_REQUEST_FUNCTIONS = ('log_server_r', 'params_from_', 'update_slots')
# llama.cpp's model loading, printed by the runner as "function: text" on every load (~210
# lines for SmolLM2: the GGUF's metadata, tensor types, vocabulary, buffers, the context);
# llama-server (Ollama 0.30 and later) puts its time and level letter first.
_LOADER_LINE = re.compile(
    r'^(?:[\d.]+ )?(?:[IWED] )?(?:llama_\w+|llm_load_\w+|print_info|load_tensors|load'
    r'|load_backend|ggml_\w+|gguf_\w+|clip_\w+|init_tokenizer|system_info|graph_reserve'
    r'|sched_reserve)\s*:')
# The loader's dump of the GGUF's keys and tensor types ("llama_model_loader: - kv  3: ...",
# "- type  f32: 61 tensors"): the model's own strings, never a failure.
_LOADER_DUMP = re.compile(r'^(?:[\d.]+ )?(?:[IWED] )?llama_model_loader: - ')
# How the loader says a load failed ("llama_model_load: error loading model: ...",
# "gguf_init_from_file_impl: failed to read magic"): the cause of a failed activate.
_LOADER_FAILURE = re.compile(r'\b(?:error|failed|unable to|cannot)\b', re.IGNORECASE)


def log_level(line: str, default: str) -> str:
    """The node's log level for one line of the server's output ('debug'|'info'|'warn'|
    'error').

    Ollama's own lines carry their level (Go slog: TRACE and DEBUG -> debug, INFO -> info,
    WARN -> warn, ERROR -> error). llama.cpp's model loading in the runner (~210 lines per
    load) is debug, except a line saying the load failed, which is an error: it names the
    cause. The runner's per-request lines (llama.cpp's slot lines and timings, several per
    chat, also its per-request notices such as prompt cache reuse) are debug: at info every
    chat would flood /rosout. Anything else keeps `default`.
    """
    match = _SLOG_LINE.match(line) or _BRACKET_LINE.match(line)
    if match:
        return _TO_ROS.get(match.group(1), default)
    if line.startswith('Error'):
        return 'error'
    if _LOADER_LINE.match(line):
        failed = not _LOADER_DUMP.match(line) and _LOADER_FAILURE.search(line)
        return 'error' if failed else 'debug'
    match = _LLAMA_CPP_LINE.match(line)
    if match:
        letter, module, function = match.groups()
        if letter == 'E':
            return 'error'
        per_request = (module == 'slot' or function in _PER_REQUEST_FUNCTIONS
                       or '| task ' in line)
        if letter in 'IDW' and per_request:
            return 'debug'
    return default


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def is_runner(process: psutil.Process, models_dir: str) -> bool:
    """A runner serving models_dir, told by its `--model <dir>/blobs/...` whatever the program
    (Ollama 0.2x's `ollama runner`, 0.30+'s llama-server) or its other flags; 0.2x's discovery
    runner (`runner --ollama-engine --port N`, no model) is none."""
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return '--model' in cmdline and any(
        part.startswith(os.path.join(models_dir, 'blobs') + os.sep) for part in cmdline)


# Ollama's models directory: manifests/<host>/<namespace>/<model>/<tag>, the defaults filled in.
DEFAULT_REGISTRY = 'registry.ollama.ai'
DEFAULT_NAMESPACE = 'library'
MEDIA_MODEL = 'application/vnd.ollama.image.model'


def model_blob(models_dir: str, model: str) -> Optional[str]:
    """The file name ('sha256-<hex>') of the model's weights in models_dir, from its manifest;
    None when the manifest cannot be read. A runner names this file after --model: that is
    how a runner is told to belong to a model when several are loaded."""
    base = model.rsplit('/', 1)[-1]
    name, tag = model.rsplit(':', 1) if ':' in base else (model, 'latest')
    parts = name.split('/')
    path = [DEFAULT_REGISTRY, DEFAULT_NAMESPACE][:max(0, 3 - len(parts))] + parts + [tag]
    # Ollama writes the path lower-cased (names are case-insensitive); older ones as given.
    for relative in (os.path.join(*path).lower(), os.path.join(*path)):
        try:
            with open(os.path.join(models_dir, 'manifests', relative), 'rb') as manifest:
                layers = json.load(manifest).get('layers', [])
        except (OSError, ValueError, AttributeError):
            continue
        digest = next((layer.get('digest', '') for layer in layers
                       if isinstance(layer, dict) and layer.get('mediaType') == MEDIA_MODEL), '')
        if digest:
            return digest.replace(':', '-')
    return None


def runs_blob(process: psutil.Process, blob: str) -> bool:
    """Whether a runner's command line names the weights file `blob` (see model_blob)."""
    try:
        return any(os.path.basename(part) == blob for part in process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def is_ollama_server(process: psutil.Process) -> bool:
    try:
        return 'serve' in process.cmdline()[1:]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


@dataclasses.dataclass
class ServerStatus:
    base_url: str
    managed: bool                     # started by this node (False: adopted)
    pid: Optional[int]
    running: bool
    exit_code: Optional[int]          # once a managed server has exited
    started_at: Optional[float]       # time.monotonic()
    restarts: int


class OllamaServer:
    """One Ollama server: spawned and owned (manage_server), or adopted."""

    def __init__(self, settings: ServerSettings, models_dir: str, log: LogSink) -> None:
        self.settings = settings
        self.models_dir = models_dir
        self.log = log
        self.base_url = settings.base_url
        self.host, self.port = parse_host(settings.host)
        self.process: Optional[subprocess.Popen] = None
        self.adopted = False
        self.started_at: Optional[float] = None
        self.restarts = 0
        self._log_threads: List[threading.Thread] = []

    # ---- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn `ollama serve`, or adopt the server already answering; raise ServerError."""
        owner = probe(self.base_url)
        if owner is PortOwner.OLLAMA:
            if self.settings.adopt_existing or not self.settings.manage_server:
                self.adopted = True
                self.started_at = time.monotonic()
                self.log('info', f'using the Ollama server already running at {self.base_url}')
                return
            raise ServerError(
                f'an Ollama server already answers at {self.base_url} (often the systemd '
                "ollama.service: 'sudo systemctl disable --now ollama'); set adopt_existing to "
                'true to use it, or choose another host port')
        if owner is PortOwner.FOREIGN or not port_is_free(self.host, self.port):
            raise ServerError(f'port {self.port} on {self.host} is in use by a program that is '
                              'not Ollama; choose another host port')
        if not self.settings.manage_server:
            raise ServerError(f'no Ollama server answers at {self.base_url} and manage_server '
                              'is false; start one or set manage_server to true')
        binary = shutil.which(self.settings.ollama_bin)
        if binary is None:
            raise ServerError(f"ollama_bin '{self.settings.ollama_bin}' was not found or is not "
                              'executable (install Ollama: https://ollama.com/download/linux)')
        swept = self.sweep_orphans()
        if swept:
            self.log('warn', f'ended {swept} orphaned runner(s) of {self.models_dir} left by an '
                             'earlier server')
        self._spawn(binary)
        try:
            self._wait_until_ready()
        except ServerError:
            self.stop()
            raise

    def _environment(self) -> Dict[str, str]:
        env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
        env.setdefault('HOME', os.path.expanduser('~'))
        env.update({
            'OLLAMA_HOST': f'{self.host}:{self.port}' if ':' not in self.host
            else f'[{self.host}]:{self.port}',
            'OLLAMA_MODELS': self.models_dir,
            'OLLAMA_NUM_PARALLEL': str(self.settings.num_parallel),
            'OLLAMA_CONTEXT_LENGTH': str(self.settings.context_length),
            'OLLAMA_MAX_QUEUE': str(self.settings.max_queue),
            # The node decides when the model is unloaded; nothing expires behind its back.
            'OLLAMA_KEEP_ALIVE': '-1',
            'OLLAMA_MAX_LOADED_MODELS': str(self.settings.max_loaded_models),
        })
        if self.settings.kv_cache_type:
            env['OLLAMA_KV_CACHE_TYPE'] = self.settings.kv_cache_type
        if not self.settings.allow_cloud:
            # No sign-in or cloud models, no lookups of ollama.com from the robot (offline,
            # Ollama logs warnings for them at start).
            env['OLLAMA_NO_CLOUD'] = '1'
        if self.settings.flash_attention != 'auto':
            env['OLLAMA_FLASH_ATTENTION'] = str(self.settings.flash_attention == 'enabled').lower()
        # Validated: OLLAMA_* names only, none of those set above.
        env.update(self.settings.extra_environment())
        return env

    def _spawn(self, binary: str) -> None:
        command = [binary, 'serve']
        cores, nice = self.settings.cores(), self.settings.nice
        self.log('info', f"starting '{' '.join(command)}' (OLLAMA_HOST={self.host}:{self.port}, "
                         f'OLLAMA_MODELS={self.models_dir}, cores '
                         f"{self.settings.cpu_cores or 'all'}, nice {nice})")
        if nice < os.getpriority(os.PRIO_PROCESS, 0) and os.geteuid() != 0:
            # Only root may lower a nice value; said here with the reason, not after fork.
            raise ServerError(f"nice {nice} is below the node's own nice "
                              f'{os.getpriority(os.PRIO_PROCESS, 0)}: only a privileged process '
                              'may raise its priority; set nice to at least that')

        def prepare_child() -> None:
            # In the child before exec: the server runs on its share from its first
            # instruction, and every runner it spawns inherits affinity and nice.
            _die_with_parent()
            if cores:
                os.sched_setaffinity(0, cores)
            os.setpriority(os.PRIO_PROCESS, 0, nice)

        try:
            self.process = _SPAWNER.submit(
                subprocess.Popen, command, env=self._environment(), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=prepare_child, close_fds=True).result()
        except subprocess.SubprocessError as error:
            # prepare_child failed (e.g. cores offline or outside the node's cpuset); the
            # child has exited without running the server.
            raise ServerError('could not give the server its share (cpu_cores '
                              f"'{self.settings.cpu_cores}', nice {nice}): {error}") from None
        self.started_at = time.monotonic()
        self._log_threads = [
            threading.Thread(target=self._pump_log, args=(stream, level), daemon=True,
                             name=f'ollama-{level}-log')
            # stdout carries one [GIN] access line per request: debug, not info.
            for stream, level in ((self.process.stdout, 'debug'), (self.process.stderr, 'info'))]
        for thread in self._log_threads:
            thread.start()

    def _pump_log(self, stream: BinaryIO, level: str) -> None:
        for raw, cut in bounded_lines(stream, MAX_LOG_LINE_BYTES):
            line = raw.decode(errors='replace').rstrip()
            if cut:
                self.log('warn', f'[ollama] {line} [line cut: the server wrote more than '
                                 f'{MAX_LOG_LINE_BYTES} bytes without a line break; the rest '
                                 'of the line is dropped]')
            elif line:
                self.log(log_level(line, level), f'[ollama] {line}')
        stream.close()

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.settings.start_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self._join_log_threads()
                raise ServerError(f"'{self.settings.ollama_bin} serve' exited with code {code} "
                                  'during start (its last log lines are above)')
            if probe(self.base_url, timeout=0.5) is PortOwner.OLLAMA:
                self.log('info', f'Ollama server ready at {self.base_url} (pid '
                                 f'{self.process.pid}, '
                                 f'{time.monotonic() - self.started_at:.3f} s)')
                return
            if time.monotonic() > deadline:
                raise ServerError(f'the Ollama server did not answer at {self.base_url} within '
                                  f'start_timeout {self.settings.start_timeout:g} s')
            try:
                self.process.wait(0.02)
            except subprocess.TimeoutExpired:
                pass

    # ---- watch ---------------------------------------------------------------------------
    def exit_code(self) -> Optional[int]:
        """The managed server's exit code once it has died; None while it runs (or adopted)."""
        return None if self.process is None else self.process.poll()

    def reachable(self, timeout: float = 0.5) -> bool:
        return probe(self.base_url, timeout=timeout) is PortOwner.OLLAMA

    def status(self) -> ServerStatus:
        running = self.adopted or (self.process is not None and self.exit_code() is None)
        return ServerStatus(base_url=self.base_url, managed=not self.adopted, pid=self.pid,
                            running=running, exit_code=self.exit_code(),
                            started_at=self.started_at, restarts=self.restarts)

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def runners(self, model: Optional[str] = None) -> List[psutil.Process]:
        """The runners this server started: its descendants serving models_dir; with `model`,
        only those holding that model's weights (none when its manifest cannot be read).

        Only its own process tree: another server sharing the models directory (a second node
        on the default ~/.ollama/models) has runners of its own that this one must never count,
        watch or kill.
        """
        blob = model_blob(self.models_dir, model) if model is not None else None
        if model is not None and blob is None:
            return []
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [process for process in descendants if is_runner(process, self.models_dir)
                and (blob is None or runs_blob(process, blob))]

    def signal_group(self, number: int) -> None:
        """Send a signal to the managed server's process group (it and its runners) now, from
        any thread: how a node that is going down ends a pull or load in progress."""
        process = self.process
        if process is not None and process.poll() is None:
            self._signal_group(process.pid, number)

    # ---- stop ----------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM, grace, SIGKILL of the group, sweep orphans, confirm the port is free.

        An adopted server is not ours to stop: it is left running.
        """
        if self.adopted:
            self.adopted = False
            return
        process = self.process
        if process is not None:
            if process.poll() is None:
                self.log('info', f'stopping the Ollama server (pid {process.pid}): SIGTERM')
                asked = time.monotonic()
                self._signal_group(process.pid, signal.SIGTERM)
                try:
                    code = process.wait(self.settings.stop_timeout)
                    self.log('info', f'the Ollama server exited {time.monotonic() - asked:.3f} s '
                                     f'after SIGTERM (code {code})')
                except subprocess.TimeoutExpired:
                    self.log('warn', f'the Ollama server ignored SIGTERM for '
                                     f'{self.settings.stop_timeout:g} s: SIGKILL')
            # The group may still hold runners even when the server exited by itself.
            self._signal_group(process.pid, signal.SIGKILL)
            process.wait()
            self._join_log_threads()
            self.process = None
        swept = self.sweep_orphans()
        if swept:
            self.log('warn', f'ended {swept} runner(s) that outlived the server')
        if process is not None:
            self._wait_port_free()
        self.started_at = None

    @staticmethod
    def _signal_group(pgid: int, number: int) -> None:
        try:
            os.killpg(pgid, number)
        except ProcessLookupError:
            pass

    def sweep_orphans(self) -> int:
        """SIGKILL runners of this models dir whose server is gone.

        Ollama's runners get no parent-death signal: when their server dies they are
        re-parented to init or to the nearest subreaper above it (systemd --user, a container's
        init), which is an ancestor of this process too. Only such runners are taken; a runner
        whose parent is alive (another node's server, a program a user started) is left alone.
        """
        adopters = {1} | {parent.pid for parent in psutil.Process().parents()}
        orphans = []
        for process in psutil.process_iter(['ppid']):
            if process.info['ppid'] not in adopters or not is_runner(process, self.models_dir):
                continue
            try:
                parent = psutil.Process(process.info['ppid'])
            except psutil.NoSuchProcess:
                continue
            if not is_ollama_server(parent):
                orphans.append(process)
        for process in orphans:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(orphans, timeout=self.settings.stop_timeout)
        return len(orphans)

    def _wait_port_free(self) -> None:
        deadline = time.monotonic() + self.settings.stop_timeout
        while not port_is_free(self.host, self.port):
            if time.monotonic() > deadline:
                raise ServerError(f'port {self.port} is still in use after the server stopped')
            time.sleep(0.02)

    def _join_log_threads(self) -> None:
        for thread in self._log_threads:
            thread.join(timeout=1.0)
        self._log_threads = []
