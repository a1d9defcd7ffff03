"""The emulator as a process started like `ollama serve`, and waiting helpers for its tests."""

import os
import signal
import socket
import subprocess
import time
from typing import Callable, Dict, List

import httpx
import ollama
import psutil


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class Emulator:
    def __init__(self, models: str, env: Dict[str, str], log_path: str) -> None:
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.models = models
        environment = dict(os.environ, OLLAMA_HOST=f'127.0.0.1:{self.port}',
                           OLLAMA_MODELS=models, **env)
        self.log_path = log_path
        self.log = open(log_path, 'wb')
        self.process = subprocess.Popen(['s100-ollama-emulator', 'serve'], env=environment,
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.client = ollama.Client(host=self.url, timeout=60)

    def wait_ready(self) -> 'Emulator':
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f'emulator exited with {self.process.returncode}')
            try:
                if httpx.get(self.url, timeout=1).text == 'Ollama is running':
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise AssertionError('emulator did not become ready')

    def pull(self, *names: str) -> None:
        for name in names:
            self.client.pull(name)

    def output(self) -> str:
        return open(self.log_path, errors='replace').read()

    def stats(self) -> Dict:
        return httpx.get(self.url + '/emulator/stats').json()

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()


def wait(condition: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.01)


def runners_of(emulator: Emulator) -> List[psutil.Process]:
    """The server's model runners, in either generation (not the discovery runner, which has
    no --model)."""
    server = psutil.Process(emulator.process.pid)
    return [child for child in server.children() if '--model' in child.cmdline()]
