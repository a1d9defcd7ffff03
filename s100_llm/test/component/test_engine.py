"""OllamaEngine against the emulator: models, streaming, cancel and errors."""

import os
import signal
import threading

import httpx
import pytest

from s100_llm.core.config import ServerSettings
from s100_llm.core.engine import ChatCanceled
from s100_llm.core.engine import EngineError
from s100_llm.core.engine import OllamaEngine
from s100_llm.core.server import OllamaServer
from support import free_port
from support import wait_for


@pytest.fixture
def start(tmp_path):
    started = []

    def start_with(token_rate: str):
        server = OllamaServer(ServerSettings(host=f'127.0.0.1:{free_port()}',
                                             ollama_bin='s100-ollama-emulator',
                                             ollama_env='OLLAMA_EMULATOR_TOKEN_RATE='
                                             + token_rate),
                              str(tmp_path / 'models'), lambda level, line: None)
        server.start()
        engine = OllamaEngine(server.base_url, 30)
        started.append((server, engine))
        return server, engine

    yield start_with
    for server, engine in started:
        engine.close()
        server.stop()


@pytest.fixture
def running(start):
    return start('500')


def test_pull_reports_progress_and_the_size_comes_from_the_manifest(running):
    _, engine = running
    assert engine.installed_size('echo') is None
    fractions = []
    engine.pull('echo', lambda fraction, status: fractions.append(fraction))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert engine.installed_size('echo:latest') > 0


def test_pull_of_an_unknown_model_names_the_cause(running):
    _, engine = running
    with pytest.raises(EngineError, match='pull nosuch: .*file does not exist'):
        engine.pull('nosuch', lambda *_: None)


def test_load_confirm_unload(running):
    _, engine = running
    engine.pull('echo', lambda *_: None)
    engine.load('echo')
    loaded = engine.loaded_model('echo')
    assert loaded is not None and loaded.context_length == 4096
    assert loaded.expires_at.startswith('2318')
    engine.unload('echo')
    wait_for(lambda: engine.loaded_model('echo') is None, 'the unload')


def test_chat_stream_separates_thinking_and_reports_stats(running):
    _, engine = running
    engine.pull('thinker', lambda *_: None)
    chunks = list(engine.chat('thinker', [{'role': 'user', 'content': 'why'}], True, {}, -1, 30))
    assert ''.join(c.thinking for c in chunks) == 'Thinking about: why'
    assert ''.join(c.content for c in chunks) == 'Answer: why'
    assert chunks[-1].done and chunks[-1].eval_count == len(chunks) - 1


def test_show_tells_a_model_that_thinks_in_levels(running):
    _, engine = running
    for name in ('reasoner', 'thinker', 'echo'):
        engine.pull(name, lambda *_: None)
    assert [engine.show(name)['think_levels'] for name in ('reasoner', 'thinker', 'echo')] == [
        True, False, False]


def test_a_level_and_logprobs_reach_the_server_and_come_back_per_chunk(running):
    _, engine = running
    engine.pull('reasoner', lambda *_: None)
    chunks = list(engine.chat('reasoner', [{'role': 'user', 'content': 'why?'}], 'high', {}, -1,
                              30, logprobs=True, top_logprobs=1))
    assert ''.join(c.thinking for c in chunks) == 'Thinking (high) about: why?'
    answer = [entry for c in chunks if c.content for entry in c.logprobs]
    assert [(t.token, t.logprob) for t in answer] == [('Answer:', -0.05), (' why?', -3.0)]
    assert answer[1].top == ((' why.', -0.06),)


def test_cancel_closes_the_connection_at_once(running):
    server, engine = running
    engine.pull('endless', lambda *_: None)
    stream = engine.chat('endless', [{'role': 'user', 'content': 'go'}], None, {}, -1, 30)
    iterator = iter(stream)
    next(iterator)
    canceled_at = stream.cancel()
    with pytest.raises(ChatCanceled):
        for _ in iterator:
            pass
    stats = wait_for(lambda: httpx.get(server.base_url + '/emulator/stats').json()['disconnects'],
                     'the server to see the disconnect')
    assert stats[-1]['at'] >= canceled_at


def test_errors_name_their_cause(running):
    server, engine = running
    with pytest.raises(EngineError, match="404: model 'ghost:latest' not found"):
        list(engine.chat('ghost', [{'role': 'user', 'content': 'x'}], None, {}, -1, 30))
    engine.pull('endless', lambda *_: None)
    stream = iter(engine.chat('endless', [{'role': 'user', 'content': 'x'}], None, {}, -1, 30))
    next(stream)
    os.killpg(server.pid, signal.SIGKILL)
    with pytest.raises(EngineError, match='closed the connection|not reachable'):
        for _ in stream:
            pass
    server.process.wait()
    with pytest.raises(EngineError, match='not reachable'):
        engine.loaded()


def test_silence_beyond_the_stream_timeout_aborts(start):
    _, engine = start('0.1')        # one token every 10 s
    engine.pull('endless', lambda *_: None)
    stream = engine.chat('endless', [{'role': 'user', 'content': 'x'}], None, {}, -1,
                         idle_timeout=0.5)
    with pytest.raises(EngineError, match='no output from Ollama for 0.5 s'):
        list(stream)


def test_read_with_a_wait_returns_none_while_the_model_is_quiet(start):
    _, engine = start('0.1')        # one token every 10 s
    engine.pull('endless', lambda *_: None)
    stream = engine.chat('endless', [{'role': 'user', 'content': 'x'}], None, {}, -1,
                         idle_timeout=30)
    first = stream.read()
    assert first is not None and not first.done
    assert stream.read(wait=0.05) is None          # the next token is seconds away
    stream.cancel()
    with pytest.raises(ChatCanceled):
        stream.read()


def test_a_cancel_before_the_stream_started_ends_the_read_at_once(running):
    """A stream canceled before the engine's loop ran its request (a warm-up canceled right
    after it was started) ends its reader with ChatCanceled, not after the idle timeout: the
    pump still starts and sees the cancel (core/warmup.py relies on it)."""
    _, engine = running
    engine.pull('echo', lambda *_: None)
    loop_free = threading.Event()
    engine._loop.call_soon_threadsafe(loop_free.wait)   # the loop is busy until set
    stream = engine.chat('echo', [{'role': 'user', 'content': 'hi'}], None, {}, -1, 10.0)
    stream.cancel()
    loop_free.set()
    with pytest.raises(ChatCanceled):
        stream.read()
