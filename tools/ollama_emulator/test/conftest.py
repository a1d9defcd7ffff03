"""Fixtures: emulators started like `ollama serve` and stopped with their process group."""

from typing import Callable, Iterator, List, Optional

import pytest

from emulator_fixtures import Emulator


@pytest.fixture
def start_emulator(tmp_path) -> Iterator[Callable[..., Emulator]]:
    started: List[Emulator] = []

    def start(models: Optional[str] = None, wait: bool = True, **env: str) -> Emulator:
        emulator = Emulator(models or str(tmp_path / 'models'), env,
                            str(tmp_path / f'emulator{len(started)}.log'))
        started.append(emulator)
        return emulator.wait_ready() if wait else emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(start_emulator) -> Emulator:
    running = start_emulator()
    running.pull('echo', 'thinker', 'endless', 'tiny')
    return running
