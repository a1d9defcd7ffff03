"""Fixtures: each test gets its own DDS domain, Ollama port and models dir, and its teardown
checks that no Ollama process of that test survived."""

import itertools
import os
import pathlib
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
# S100_LLM_TEST_OLLAMA=<ollama binary>: the real-model tests against it (see real_ollama.py).
import real_ollama
from real_ollama import pytest_collection_modifyitems  # noqa: F401 (pytest's hooks)
from real_ollama import pytest_report_header  # noqa: F401
from real_ollama import pytest_terminal_summary  # noqa: F401

from harness import free_port
from harness import NodeProcess
from harness import processes_of
from harness import RosClient
from harness import wait_for

# Discovery stays on this machine (Jazzy and newer; Humble used ROS_LOCALHOST_ONLY=1).
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.pop('ROS_LOCALHOST_ONLY', None)
# Test runs that share a machine (and so DDS discovery) stay apart with disjoint domain ranges:
# S100_LLM_TEST_DOMAINS=FIRST-LAST (default 1-100; FastDDS accepts 0..232).
_FIRST_DOMAIN, _LAST_DOMAIN = (int(x) for x in
                               os.environ.get('S100_LLM_TEST_DOMAINS', '1-100').split('-'))
_domains = itertools.count(random.Random(os.getpid()).randrange(
    0, _LAST_DOMAIN - _FIRST_DOMAIN + 1))
OLLAMA_BIN = real_ollama.ollama_bin()


def _next_domain_id() -> int:
    return _FIRST_DOMAIN + next(_domains) % (_LAST_DOMAIN - _FIRST_DOMAIN + 1)


@pytest.fixture
def domain_id() -> int:
    return _next_domain_id()


@pytest.fixture(scope='module')
def module_domain_id() -> int:
    """A domain for a node shared by a module's read-only tests."""
    return _next_domain_id()


@pytest.fixture
def ollama_port() -> int:
    return free_port()


@pytest.fixture
def models_dir(tmp_path: pathlib.Path) -> str:
    return real_ollama.models_dir(tmp_path / 'models')


def default_parameters(port: int, models_dir: str) -> Dict[str, Any]:
    return {'model': 'echo:latest', 'ollama_bin': OLLAMA_BIN, 'host': f'127.0.0.1:{port}',
            'models_dir': models_dir, 'restart_backoff': 0.0, 'diagnostics_period': 0.5}


class LlmUnderTest:
    """One running node and a client, plus what the test needs to check from outside."""

    def __init__(self, node: NodeProcess, client: RosClient, port: int, models_dir: str):
        self.node = node
        self.client = client
        self.port = port
        self.models_dir = models_dir
        self.base_url = f'http://127.0.0.1:{port}'

    def leftovers(self) -> List[Any]:
        return processes_of(self.models_dir, self.port)

    def activate(self) -> None:
        assert self.client.change_state('configure'), self.node.output()
        assert self.client.change_state('activate'), self.node.output()


@pytest.fixture
def start_llm(tmp_path: pathlib.Path, domain_id: int, ollama_port: int,
              models_dir: str) -> Iterator[Callable[..., LlmUnderTest]]:
    started: List[Tuple[NodeProcess, RosClient]] = []

    def start(env: Optional[Dict[str, str]] = None, **parameters: Any) -> LlmUnderTest:
        values = ({} if 'params_file' in parameters
                  else default_parameters(ollama_port, models_dir))
        values.update(parameters)
        node = NodeProcess(domain_id, tmp_path / f'node{len(started)}.log', values, env)
        client = RosClient(domain_id)
        started.append((node, client))
        wait_for(lambda: node.process.poll() is not None or client.service_ready('get_state'),
                 'the node to come up')
        assert node.process.poll() is None, f'llm_node exited:\n{node.output()}'
        client.wait_for_node()
        return LlmUnderTest(node, client, ollama_port, models_dir)

    yield start
    for node, client in started:
        client.close()
        node.stop()
    wait_for(lambda: not processes_of(models_dir, ollama_port),
             'every Ollama process of the test to be gone', timeout=10)


@pytest.fixture
def active(start_llm: Callable[..., LlmUnderTest]) -> Callable[..., LlmUnderTest]:
    """start_llm, then configure and activate: a node serving the model."""
    def start(env: Optional[Dict[str, str]] = None, **parameters: Any) -> LlmUnderTest:
        llm = start_llm(env=env, **parameters)
        llm.activate()
        return llm
    return start
