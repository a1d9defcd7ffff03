"""OLLAMA_EMULATOR_PULL_RATE: a pull as slow as a slow network, so that tests can act while it
runs (cancel it, send a second one, stop the server)."""

import time

from ollama_emulator import catalog


def test_a_pull_takes_at_least_its_bytes_over_the_rate(start_emulator):
    rate = 32 * 1024 * 1024
    emulator = start_emulator(OLLAMA_EMULATOR_PULL_RATE=str(rate))
    weights = len(catalog.weights_of('smollm2:135m'))
    started = time.monotonic()
    emulator.client.pull('smollm2:135m')
    # A lower bound the emulator's pauses guarantee (unlimited, it takes a fraction of it).
    assert time.monotonic() - started >= weights / rate
    assert [m.model for m in emulator.client.list().models] == ['smollm2:135m']
