"""The node's fixtures: a running llm_node and a ROS client in the test's domain; the teardown
checks that no Ollama process of that test survived."""

import pathlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import default_parameters
from harness import NodeProcess
from harness import processes_of
from harness import RosClient
from harness import wait_for


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

    def start(env: Optional[Dict[str, str]] = None, preexec: Optional[Callable[[], None]] = None,
              **parameters: Any) -> LlmUnderTest:
        """env: see NodeProcess; preexec: runs in the node's process before it starts."""
        values = ({} if 'params_file' in parameters
                  else default_parameters(ollama_port, models_dir))
        values.update(parameters)
        node = NodeProcess(domain_id, tmp_path / f'node{len(started)}.log', values, env,
                           preexec=preexec)
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
