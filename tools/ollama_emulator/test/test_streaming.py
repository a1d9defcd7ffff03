"""Disconnects, queueing, and the faults the node's reliability tests inject."""

import json
import socket
import threading
import time

import httpx
import ollama
import pytest

from emulator_fixtures import runners_of
from emulator_fixtures import wait


def endless_stream(emulator, **options):
    return emulator.client.chat('endless', [{'role': 'user', 'content': 'go'}], stream=True,
                                options=options or None)


def test_closing_the_stream_stops_generation_and_frees_the_slot(emulator):
    stream = endless_stream(emulator)
    for _, _ in zip(range(20), stream):
        pass
    closed_at = time.monotonic()
    stream.close()
    stats = wait(lambda: (lambda s: s if s['disconnects'] and not s['generating'] else None)(
        emulator.stats()), 'the server to see the disconnect')
    assert stats['disconnects'][-1]['at'] >= closed_at
    # OLLAMA_NUM_PARALLEL is 1: had the generation gone on, this chat would wait forever.
    assert emulator.client.chat('echo', [{'role': 'user', 'content': 'next'}]).done


def test_a_full_queue_answers_503(start_emulator):
    emulator = start_emulator(OLLAMA_MAX_QUEUE='1', OLLAMA_EMULATOR_TOKEN_RATE='200')
    emulator.pull('endless')
    running = endless_stream(emulator)
    next(running)
    waiting_done = threading.Event()

    def wait_in_queue():
        try:
            emulator.client.chat('endless', [{'role': 'user', 'content': 'x'}],
                                 options={'num_predict': 1})
        finally:
            waiting_done.set()

    threading.Thread(target=wait_in_queue, daemon=True).start()
    wait(lambda: emulator.stats()['pending'] == 1, 'the second request to queue')
    with pytest.raises(ollama.ResponseError) as error:
        emulator.client.chat('endless', [{'role': 'user', 'content': 'y'}])
    assert error.value.status_code == 503
    assert 'maximum pending requests exceeded' in error.value.error
    running.close()
    assert waiting_done.wait(30)


def test_runner_crash_mid_stream_is_an_error_line(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_RUNNER_CRASH_AFTER='3')
    emulator.pull('endless')
    received = []
    with pytest.raises(ollama.ResponseError) as error:
        for part in endless_stream(emulator):
            received.append(part)
    assert error.value.status_code == -1 and 'unexpected EOF' in error.value.error
    assert 1 <= len(received) <= 3
    wait(lambda: not emulator.client.ps().models, 'the dead runner to leave /api/ps')


def test_server_crash_mid_stream_orphans_the_runner(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_SERVER_CRASH_AFTER='3')
    emulator.pull('endless')
    emulator.client.generate('endless')
    (runner,) = runners_of(emulator)
    with pytest.raises((httpx.RemoteProtocolError, ollama.ResponseError)):
        for _ in endless_stream(emulator):
            pass
    assert emulator.process.wait(30) == 2
    assert runner.is_running()
    runner.kill()


@pytest.mark.parametrize('env, model', [({'OLLAMA_EMULATOR_LOAD_FAILURE': 'oom'}, 'echo'),
                                        ({}, 'oom')])
def test_load_failure_is_a_500_with_ollamas_message(start_emulator, env, model):
    emulator = start_emulator(**env)
    emulator.pull(model)
    with pytest.raises(ollama.ResponseError) as error:
        emulator.client.generate(model)
    assert error.value.status_code == 500
    assert error.value.error.startswith('model requires more system memory')


def test_slow_load_blocks_the_preload_until_loaded(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_LOAD_DELAY='1')
    emulator.pull('echo')
    reply = emulator.client.generate('echo')
    assert reply.done_reason == 'load' and emulator.client.ps().models


def test_a_prompt_rate_makes_evaluation_take_time_and_a_disconnect_stops_it(start_emulator):
    """OLLAMA_EMULATOR_PROMPT_RATE: a scripted model evaluates its prompt at that rate before
    its first token (prompt_eval_duration says so); a client that goes meanwhile stops it and
    frees the slot."""
    emulator = start_emulator(OLLAMA_EMULATOR_PROMPT_RATE='10')
    emulator.pull('echo')
    short = emulator.client.chat('echo', [{'role': 'user', 'content': 'hi'}])
    assert short.prompt_eval_count == 4
    assert short.prompt_eval_duration >= 0.4e9     # 4 tokens at 10 tokens/s
    body = json.dumps({'model': 'echo', 'messages': [
        {'role': 'user', 'content': 'word ' * 600}]}).encode()   # a minute of evaluation
    client = socket.create_connection(('127.0.0.1', emulator.port))
    client.sendall(b'POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                   b'Content-Length: %d\r\n\r\n%s' % (len(body), body))
    wait(lambda: emulator.stats()['generating'] == 1, 'the evaluation to start')
    client.close()
    wait(lambda: not emulator.stats()['generating'], 'the server to see the disconnect')
    assert emulator.client.chat('echo', [{'role': 'user', 'content': 'next'}]).done
