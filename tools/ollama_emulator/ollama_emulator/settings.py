"""The emulator's settings, read from the environment variables Ollama reads (plus its faults)."""

import dataclasses
import os
import pathlib
import re
from typing import Mapping, Optional, Tuple
import urllib.parse

from .durations import parse_keep_alive

DEFAULT_PORT = 11434
# The runner generations of Ollama the emulator can behave as (OLLAMA_EMULATOR_RUNNER):
# 'ollama-runner' (up to 0.2x: `ollama runner --model <blob> --port N`, threads in the load
# request, a discovery runner at start, prompt_eval_count = the whole prompt) and
# 'llama-server' (0.30 and later: llama.cpp's server, `-t` on its command line, prompt_eval_count
# = the tokens evaluated). The default is the current generation, which a fresh install gets.
RUNNER_GENERATIONS = ('llama-server', 'ollama-runner')


def parse_host(value: str) -> Tuple[str, int]:
    """Parse OLLAMA_HOST like Ollama: '127.0.0.1:11434', ':11434' (all interfaces), 'http://x'."""
    value = value.strip() or '127.0.0.1'
    if '://' not in value:
        value = 'http://' + value
    parsed = urllib.parse.urlsplit(value)
    host = parsed.hostname if parsed.hostname is not None else ''
    port = parsed.port or DEFAULT_PORT
    return (host or '0.0.0.0', port)


@dataclasses.dataclass(frozen=True)
class Faults:
    """Failures to inject, for the node's reliability tests (OLLAMA_EMULATOR_* variables)."""

    start_delay: float = 0.0          # seconds the port accepts TCP before HTTP is served
    load_delay: float = 0.0           # extra seconds every model load takes
    load_failure: bool = False        # every load fails with Ollama's out-of-memory message
    runner_crash_after: int = 0       # the runner exits after this many tokens (0: never)
    server_crash_after: int = 0       # the server exits after streaming this many tokens
    server_crash_on_load: bool = False  # the server exits while loading a model
    ignore_sigterm: bool = False      # the server ignores SIGTERM and SIGINT
    token_rate: float = 0.0           # tokens/s of the scripted models (0: as fast as possible)
    # Bytes the models dir's blobs may grow by before a write fails with Ollama's ENOSPC
    # error ("write <path>: no space left on device"); None: no limit but the real disk's.
    disk_free: Optional[int] = None
    # OLLAMA_EMULATOR_OFFLINE=1: no registry (a robot without network): every pull fails as
    # Ollama's does when the registry's name does not resolve.
    offline: bool = False
    # OLLAMA_EMULATOR_PULL_RATE: bytes/s a pull writes, like a slow network (0: as fast as
    # the disk); for tests that act while a pull runs (cancel, a second pull, cleanup).
    pull_rate: float = 0.0
    # prompt tokens/s the scripted models evaluate before their first token (0: at once)
    prompt_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str
    port: int
    models_dir: pathlib.Path
    keep_alive: Optional[float]        # seconds; None = forever
    num_parallel: int
    max_queue: int
    max_loaded_models: int
    context_length: int
    faults: Faults
    # OLLAMA_EMULATOR_REQUEST_LOG: a file that gets every /api/chat request body as it
    # arrived, one JSON line each ({"path", "body"}); for tests, off by default.
    request_log: str = ''
    # OLLAMA_NO_CLOUD: no ollama.com sign-in or cloud models (a bool as Go parses one).
    no_cloud: bool = False
    runner_generation: str = RUNNER_GENERATIONS[0]

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> 'Settings':
        env = os.environ if environ is None else environ
        host, port = parse_host(env.get('OLLAMA_HOST', ''))
        models = env.get('OLLAMA_MODELS') or str(pathlib.Path(env.get('HOME', '/')) / '.ollama'
                                                 / 'models')
        keep_alive_text = env.get('OLLAMA_KEEP_ALIVE') or '5m'
        # Unlike the API's keep_alive, the variable also takes a plain integer of seconds.
        keep_alive = parse_keep_alive(
            int(keep_alive_text) if re.fullmatch(r'-?\d+', keep_alive_text) else keep_alive_text)

        def number(name: str, default: float) -> float:
            return float(env.get(name) or default)

        faults = Faults(
            start_delay=number('OLLAMA_EMULATOR_START_DELAY', 0),
            load_delay=number('OLLAMA_EMULATOR_LOAD_DELAY', 0),
            load_failure=env.get('OLLAMA_EMULATOR_LOAD_FAILURE', '') == 'oom',
            runner_crash_after=int(number('OLLAMA_EMULATOR_RUNNER_CRASH_AFTER', 0)),
            server_crash_after=int(number('OLLAMA_EMULATOR_SERVER_CRASH_AFTER', 0)),
            server_crash_on_load=env.get('OLLAMA_EMULATOR_SERVER_CRASH_ON_LOAD', '') == '1',
            ignore_sigterm=env.get('OLLAMA_EMULATOR_IGNORE_SIGTERM', '') == '1',
            token_rate=number('OLLAMA_EMULATOR_TOKEN_RATE', 0),
            disk_free=int(env['OLLAMA_EMULATOR_DISK_FREE'])
            if env.get('OLLAMA_EMULATOR_DISK_FREE') else None,
            offline=env.get('OLLAMA_EMULATOR_OFFLINE', '') == '1',
            pull_rate=number('OLLAMA_EMULATOR_PULL_RATE', 0),
            prompt_rate=number('OLLAMA_EMULATOR_PROMPT_RATE', 0),
        )
        generation = env.get('OLLAMA_EMULATOR_RUNNER') or RUNNER_GENERATIONS[0]
        if generation not in RUNNER_GENERATIONS:
            raise ValueError(f'OLLAMA_EMULATOR_RUNNER={generation!r}: expected one of '
                             f"{', '.join(RUNNER_GENERATIONS)}")
        return cls(
            host=host,
            port=port,
            models_dir=pathlib.Path(models),
            keep_alive=keep_alive,
            num_parallel=int(number('OLLAMA_NUM_PARALLEL', 1)),
            max_queue=int(number('OLLAMA_MAX_QUEUE', 512)),
            max_loaded_models=int(number('OLLAMA_MAX_LOADED_MODELS', 3)),
            context_length=int(number('OLLAMA_CONTEXT_LENGTH', 4096)),
            faults=faults,
            request_log=env.get('OLLAMA_EMULATOR_REQUEST_LOG', ''),
            no_cloud=env.get('OLLAMA_NO_CLOUD', '').strip().lower() not in (
                '', '0', 'f', 'false'),
            runner_generation=generation,
        )
