"""The real model: SmolLM2-135M-Instruct served by llama.cpp behind the emulator."""

import json
import time

import jsonschema
import ollama
import pytest

from emulator_fixtures import wait

QUESTION = [{'role': 'user', 'content': 'What is the capital of France?'}]


def test_smollm2_answers_in_english_with_real_counts(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_THREADS='2')
    emulator.pull('smollm2:135m')
    parts = list(emulator.client.chat('smollm2:135m', QUESTION, stream=True,
                                      options={'temperature': 0, 'num_predict': 40}))
    answer = ''.join(p.message.content for p in parts)
    assert 'Paris' in answer
    final = parts[-1]
    assert final.done and final.eval_count > 0 and final.prompt_eval_count > 5
    assert final.eval_duration > 0 and final.prompt_eval_duration > 0


def test_closing_a_real_stream_stops_llama_cpp(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_THREADS='2')
    emulator.pull('smollm2:135m')
    stream = emulator.client.chat('smollm2:135m', QUESTION + [
        {'role': 'user', 'content': 'Now write a very long essay about Paris.'}],
        stream=True, options={'num_predict': 2000})
    for _, _ in zip(range(5), stream):
        pass
    closed_at = time.monotonic()
    stream.close()
    wait(lambda: emulator.stats()['disconnects'], 'the server to see the disconnect')
    # One slot: a new answer is only possible once llama.cpp stopped the 2000-token one.
    reply = emulator.client.chat('smollm2:135m', QUESTION,
                                 options={'temperature': 0, 'num_predict': 8})
    assert reply.done and time.monotonic() > closed_at


PLACE = {'type': 'object', 'properties': {
    'place': {'type': 'string', 'maxLength': 40}, 'confidence': {'type': 'number'},
    'door_open': {'type': 'boolean'}}, 'required': ['place', 'confidence', 'door_open']}


def test_smollm2_output_is_constrained_to_the_schema(start_emulator):
    """llama.cpp's grammar-constrained sampling: every answer parses and matches."""
    # One llama.cpp thread: several constrained answers stay quick on a busy 2-core machine
    # (threads that outnumber free cores make llama.cpp many times slower).
    emulator = start_emulator(OLLAMA_EMULATOR_THREADS='1')
    emulator.pull('smollm2:135m')
    prompts = ['Where is the robot? Answer in JSON.', 'Is the kitchen door open?',
               'Name a room of a house.']
    for prompt in prompts:
        for seed in (1, 2):
            reply = emulator.client.chat('smollm2:135m', [{'role': 'user', 'content': prompt}],
                                         format=PLACE, options={'seed': seed, 'num_predict': 200})
            assert reply.done_reason == 'stop', reply.message.content
            jsonschema.validate(json.loads(reply.message.content), PLACE)
    with pytest.raises(ollama.ResponseError) as error:
        emulator.client.chat('smollm2:135m', [{'role': 'user', 'content': 'x'}],
                             format={'type': 'bogus'})
    assert error.value.status_code == 500 and 'bogus' in error.value.error


def test_two_conversations_alternating_on_one_slot_evaluate_their_history_again(
        start_emulator):
    """Ollama keeps one cached prompt per slot (OLLAMA_NUM_PARALLEL=1: one): a conversation
    whose slot another conversation used in between is evaluated again, not restored."""
    emulator = start_emulator(OLLAMA_EMULATOR_THREADS='2')
    emulator.pull('smollm2:135m')
    options = {'temperature': 0, 'num_predict': 8}
    left = [{'role': 'system', 'content': 'You are a helpful robot. ' * 20},
            {'role': 'user', 'content': 'What is the capital of France?'}]
    right = [{'role': 'user', 'content': 'Tell me about the weather on Mars today. ' * 10}]
    first = emulator.client.chat('smollm2:135m', left, options=options)
    emulator.client.chat('smollm2:135m', right, options=options)
    left += [first.message, {'role': 'user', 'content': 'And of Spain?'}]
    again = emulator.client.chat('smollm2:135m', left, options=options)
    assert again.prompt_eval_count > first.prompt_eval_count


def test_smollm2_gives_real_logprobs(start_emulator):
    """llama.cpp's own log-probabilities, through Ollama's shape: one per streamed token, the
    tokens are the answer, each <= 0 with its likeliest alternatives best first."""
    emulator = start_emulator()
    emulator.pull('smollm2:135m')
    parts = list(emulator.client.chat('smollm2:135m', QUESTION, stream=True, logprobs=True,
                                      top_logprobs=3, options={'temperature': 0, 'seed': 1,
                                                               'num_predict': 12}))
    tokens = [entry for part in parts for entry in part.logprobs or ()]
    assert ''.join(t.token for t in tokens) == ''.join(p.message.content for p in parts)
    assert tokens and len(tokens) == len([p for p in parts if p.message.content])
    assert all(t.logprob <= 0 for t in tokens)
    for token in tokens:
        alternatives = [alt.logprob for alt in token.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        # temperature 0: the chosen token is the likeliest one
        assert token.logprob == pytest.approx(alternatives[0], abs=1e-4)
