"""The tests' helpers that need no ROS 2: the unit tests (which also run on jammy's Python
packages without the ROS wheels) import these; harness re-exports them for the node's tests."""

import os
import shlex
import socket
import time
from typing import Any, Callable, Dict, List, MutableMapping, Optional, Tuple, Union

import psutil


def localhost_discovery(environ: MutableMapping[str, str]) -> None:
    """Keep DDS discovery (of the nodes and clients started with environ) on this machine.

    ROS_AUTOMATIC_DISCOVERY_RANGE exists from Iron on; Humble ignores it and needs
    ROS_LOCALHOST_ONLY=1, which Jazzy reports as deprecated: so that one is set on Humble only.
    """
    environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    if environ.get('ROS_DISTRO') == 'humble':
        environ['ROS_LOCALHOST_ONLY'] = '1'
    else:
        environ.pop('ROS_LOCALHOST_ONLY', None)


# Generous bounds for "this must happen", never expectations of speed.
WAIT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll until condition() is truthy; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:g} s waiting for {what}')
        time.sleep(0.02)


class RecordedLog(list):
    """A log sink of the core (called with level and line) that keeps every line."""

    def __call__(self, level: str, line: str) -> None:
        self.append((level, line))

    def text(self) -> str:
        return '\n'.join(line for _, line in self)


def processes_of(models_dir: str, port: int) -> List[psutil.Process]:
    """Every Ollama (emulator) server of this models dir or port, or runner of this models dir,
    still alive."""
    found = []
    for process in psutil.process_iter(['cmdline', 'environ', 'status']):
        cmdline = process.info['cmdline'] or []
        environ = process.info['environ'] or {}
        if process.info['status'] == psutil.STATUS_ZOMBIE:
            continue
        runner = any(part.startswith(os.path.join(models_dir, 'blobs')) for part in cmdline)
        server = cmdline[-1:] == ['serve'] and (
            environ.get('OLLAMA_MODELS') == models_dir
            or environ.get('OLLAMA_HOST', '').endswith(f':{port}'))
        if runner or server:
            found.append(process)
    return found


def log_level(level: Union[int, bytes]) -> int:
    r"""An rcl_interfaces/Log level as an int, to compare levels on every distro: Humble's
    generated constants (Log.WARN ...: `byte WARN=30` in Log.msg) are one-byte bytes (b'\x1e'),
    newer distros' are ints, and the level field of a received message (uint8) is an int."""
    return ord(level) if isinstance(level, bytes) else int(level)


EMULATOR_GENERATION = 'OLLAMA_EMULATOR_RUNNER'


def with_generation(ollama_env: str) -> str:
    """An ollama_env value plus the emulator's generation of the test run (when set), for the
    core's tests that start servers themselves."""
    generation = os.environ.get(EMULATOR_GENERATION)
    if not generation or EMULATOR_GENERATION in ollama_env:
        return ollama_env
    return ' '.join(filter(None, [ollama_env, f'{EMULATOR_GENERATION}={shlex.quote(generation)}']))


def split_server_env(env: Optional[Dict[str, str]], generation: bool = False
                     ) -> Tuple[Dict[str, str], str]:
    """(the node's variables, the OLLAMA_* ones as an ollama_env value); with `generation`,
    the emulator's generation from the test run's environment too, unless env sets it."""
    env = dict(env or {})
    if generation and os.environ.get(EMULATOR_GENERATION):
        env.setdefault(EMULATOR_GENERATION, os.environ[EMULATOR_GENERATION])
    server = {name: env.pop(name) for name in list(env) if name.startswith('OLLAMA_')}
    return env, shlex.join(f'{name}={value}' for name, value in server.items())
