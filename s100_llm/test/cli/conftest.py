"""Fixtures of the CLI tests: each test's `ros2` runs in the test's DDS domain with its own
daemon, and every `ros2 launch` it started is stopped, with nothing of it left running."""

import pathlib
from typing import Callable, Iterator, List

import pytest

from cli.cli_harness import Launch
from cli.cli_harness import Ros2
from cli.cli_harness import ros2_cli_missing
from harness import free_port

HERE = pathlib.Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    reason = ros2_cli_missing()
    if reason is None:
        return
    for item in items:
        if HERE in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def ros2(domain_id: int) -> Iterator[Ros2]:
    cli = Ros2(domain_id)
    yield cli
    cli.close()


@pytest.fixture
def launch(ros2: Ros2, tmp_path: pathlib.Path, ollama_port: int,
           models_dir: str) -> Iterator[Callable[..., Launch]]:
    """launch(*arguments, model=..., env=...): `ros2 launch s100_llm llm.launch.py` with the
    emulator on the test's port and models dir."""
    started: List[Launch] = []

    def start(*arguments: str, **options: object) -> Launch:
        launched = Launch(ros2, tmp_path / f'launch{len(started)}.log', ollama_port,
                          models_dir, *arguments, **options)
        started.append(launched)
        return launched

    yield start
    # The newest first: an earlier launch of the test checks for leftovers on the same port.
    # Every launch is closed even when one of them left something running.
    failures = []
    for launched in reversed(started):
        try:
            launched.close()
        except AssertionError as failure:
            failures.append(str(failure))
    assert not failures, '\n'.join(failures)


@pytest.fixture(scope='module')
def shared_ros2(module_domain_id: int) -> Iterator[Ros2]:
    cli = Ros2(module_domain_id)
    yield cli
    cli.close()


@pytest.fixture(scope='module')
def shared_launch(shared_ros2: Ros2, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Launch]:
    """One autostarted launch for a module's tests that only look (and chat)."""
    workdir = tmp_path_factory.mktemp('shared_launch')
    launched = Launch(shared_ros2, workdir / 'launch.log', free_port(),
                      str(workdir / 'models'))
    try:
        launched.wait_state('active')
        yield launched
    finally:
        launched.close()
