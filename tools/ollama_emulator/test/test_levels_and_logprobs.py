"""Thinking levels and token log-probabilities, as Ollama 0.30+ answers them."""

import httpx
import ollama
import pytest

from emulator_fixtures import Emulator

WHY = [{'role': 'user', 'content': 'why'}]


@pytest.fixture
def reasoner(start_emulator) -> Emulator:
    running = start_emulator()
    running.pull('reasoner', 'thinker', 'echo')
    return running


@pytest.mark.parametrize('think, level', [
    ('low', 'low'), ('medium', 'medium'), ('high', 'high'), ('max', 'max'), (True, 'medium')])
def test_the_reasoner_thinks_at_the_level_it_is_given(reasoner, think, level):
    reply = reasoner.client.chat('reasoner', WHY, think=think)
    assert reply.message.thinking == f'Thinking ({level}) about: why'
    assert reply.message.content == 'Answer: why'


def test_the_reasoners_template_reads_the_level_and_the_thinkers_does_not(reasoner):
    assert '.ThinkLevel' in reasoner.client.show('reasoner').template
    assert '.ThinkLevel' not in reasoner.client.show('thinker').template


def test_a_level_is_accepted_by_any_thinking_model_and_refused_by_others(reasoner):
    # Ollama since 0.17.7: the level reaches the template, which may ignore it.
    assert reasoner.client.chat('thinker', WHY, think='high').message.thinking == \
        'Thinking about: why'
    with pytest.raises(ollama.ResponseError) as error:
        reasoner.client.chat('echo', WHY, think='low')
    assert (error.value.status_code, error.value.error) == (400,
                                                            '"echo" does not support thinking')


@pytest.mark.parametrize('body, message', [
    ({'think': 'extreme'}, 'invalid think value: "extreme" (must be "high", "medium", "low", '
                           '"max", true, or false)'),
    ({'logprobs': True, 'top_logprobs': 21}, 'top_logprobs must be between 0 and 20'),
    ({'logprobs': True, 'top_logprobs': -1}, 'top_logprobs must be between 0 and 20'),
])
def test_bad_think_and_top_logprobs_are_400(reasoner, body, message):
    reply = httpx.post(f'{reasoner.url}/api/chat',
                       json={'model': 'reasoner', 'messages': WHY, **body})
    assert (reply.status_code, reply.json()) == (400, {'error': message})


def test_each_chunk_carries_its_tokens_logprobs(reasoner):
    parts = list(reasoner.client.chat('echo', [{'role': 'user', 'content': 'door open?'}],
                                      stream=True, logprobs=True))
    tokens = [entry for part in parts for entry in part.logprobs or ()]
    assert ''.join(t.token for t in tokens) == 'user: door open?\n'
    assert [t.logprob for t in tokens] == [-0.05, -0.05, -3.0, -0.05]   # "?": its doubt
    assert all(t.top_logprobs is None for t in tokens)      # none asked for: none sent
    assert parts[-1].done and not parts[-1].logprobs


def test_top_logprobs_are_the_likeliest_alternatives(reasoner):
    reply = reasoner.client.chat('echo', [{'role': 'user', 'content': 'open?'}], logprobs=True,
                                 top_logprobs=2)
    doubt = reply.logprobs[1]
    assert (doubt.token, doubt.logprob) == (' open?', -3.0)
    assert [(t.token, t.logprob) for t in doubt.top_logprobs] == [
        (' open.', -0.06), (' open?', -3.0)]


def test_no_logprobs_unless_asked(reasoner):
    raw = httpx.post(f'{reasoner.url}/api/chat',
                     json={'model': 'echo', 'messages': WHY, 'stream': False}).json()
    assert 'logprobs' not in raw


def test_thinking_tokens_carry_logprobs_too(reasoner):
    parts = list(reasoner.client.chat('reasoner', WHY, think='low', stream=True,
                                      logprobs=True))
    thinking = [part for part in parts if part.message.thinking]
    assert thinking and all(len(part.logprobs) == 1 for part in thinking)
