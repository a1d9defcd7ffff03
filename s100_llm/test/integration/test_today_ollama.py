"""Issue 28: today's Ollama used well. Thinking levels, token confidence and answer deadlines,
through the node over DDS, with the emulator (or the real SmolLM2) behind it."""

import json
import math
import os
import subprocess

from action_msgs.msg import GoalStatus
import httpx
import pytest
from s100_llm_msgs.action import Chat

from harness import install_prefix
from harness import wait_for


def chat_requests(path):
    """The bodies of the goals' /api/chat requests the emulator received (its request log;
    the prompt cache's warm-ups, num_predict 1, left out)."""
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    bodies = [json.loads(entry['body']) for entry in entries if entry['path'] == '/api/chat']
    return [body for body in bodies if body.get('options', {}).get('num_predict') != 1]


def test_a_level_reaches_ollama_as_its_think_string(active, tmp_path, domain_id):
    log = tmp_path / 'requests.jsonl'
    llm = active(model='reasoner:latest', env={'OLLAMA_EMULATOR_REQUEST_LOG': str(log)})
    run = llm.client.chat('why', think=Chat.Goal.THINK_HIGH)
    assert run.status == GoalStatus.STATUS_SUCCEEDED, run.result.error_message
    assert (run.result.thinking, run.result.text) == ('Thinking (high) about: why',
                                                      'Answer: why')
    deep = llm.client.chat('why', think=Chat.Goal.THINK_MAX, token_logprobs=True).result
    assert deep.thinking == 'Thinking (max) about: why'
    # The confidence is the answer's: the reasoning's tokens are not counted.
    assert [t.token for t in deep.confidence.tokens] == ['Answer:', ' why']
    done = subprocess.run([str(install_prefix() / 'lib' / 's100_llm' / 'chat'), '--think', 'low',
                           '--hide-thinking', 'why'], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id)))
    out, err = done.stdout, done.stderr
    assert (done.returncode, out) == (0, 'Answer: why'), err
    assert [body.get('think') for body in chat_requests(log) if body['messages']] == [
        'high', 'max', 'low']


def test_a_level_is_refused_for_a_model_that_thinks_on_or_off(active):
    llm = active(model='thinker:latest')
    run = llm.client.chat('why', think=Chat.Goal.THINK_LOW)
    assert run.status == GoalStatus.STATUS_ABORTED
    assert run.result.error_code == Chat.Result.INVALID_GOAL
    assert "model 'thinker:latest' thinks on or off, not in levels" in run.result.error_message
    assert llm.client.chat('why', think=Chat.Goal.THINK_ON).result.thinking == \
        'Thinking about: why'


def test_a_doubtful_token_and_field_are_identified(active):
    """The emulator's scripted models doubt every token with a question mark (log-probability
    -3.0, the others -0.05): the summary names it, and the JSON field it falls in."""
    llm = active()
    result = llm.client.chat('is the door open?', logprobs=True, token_logprobs=True,
                             top_logprobs=2).result
    confidence = result.confidence
    assert confidence.available and result.text == 'user: is the door open?\n'
    assert confidence.token_count == len(confidence.tokens) == 6
    assert ''.join(t.token for t in confidence.tokens) == result.text
    assert (confidence.min_token, confidence.min_logprob) == (' open?', -3.0)
    assert math.isclose(confidence.mean_logprob, (5 * -0.05 - 3.0) / 6, rel_tol=1e-6)
    doubt = confidence.tokens[4]
    assert list(doubt.top_tokens) == [' open.', ' open?']
    assert list(doubt.top_logprobs) == pytest.approx([-0.06, -3.0])
    schema = {'type': 'object', 'properties': {'count': {'type': 'integer'},
                                               'place': {'type': 'string'}},
              'required': ['count', 'place']}
    structured = llm.client.chat('where is it?', format=json.dumps(schema),
                                 logprobs=True).result
    assert structured.error_code == Chat.Result.NONE, structured.error_message
    assert structured.confidence.least_confident_field == '/place'
    assert structured.confidence.least_confident_field_logprob < -0.5
    assert structured.confidence.tokens == []       # token_logprobs not asked for
    assert not llm.client.chat('no logprobs').result.confidence.available


@pytest.mark.real_model
def test_the_real_smollm2_gives_plausible_logprobs(active):
    llm = active(model='smollm2:135m', num_thread=2)
    result = llm.client.chat('What is the capital of France?', temperature=0.0, max_tokens=24,
                             logprobs=True, token_logprobs=True, top_logprobs=3).result
    confidence = result.confidence
    assert result.error_code == Chat.Result.NONE and 'Paris' in result.text
    assert confidence.available and confidence.token_count == len(confidence.tokens) > 0
    assert ''.join(t.token for t in confidence.tokens) == result.text
    assert all(t.logprob <= 0.0 for t in confidence.tokens)
    assert confidence.min_logprob <= confidence.mean_logprob <= 0.0
    # temperature 0: every token is the likeliest of its alternatives
    for token in confidence.tokens:
        assert len(token.top_logprobs) == 3
        assert token.logprob == pytest.approx(max(token.top_logprobs), abs=1e-4)
    # Sampling far from the likeliest tokens (temperature 2) gives an answer the model itself
    # finds unlikely: its summary tells it from the likeliest answer to the same question.
    question = {'max_tokens': 24, 'logprobs': True, 'seed': 7}
    sure = llm.client.chat('Tell me about robots.', temperature=0.0, **question).result
    guess = llm.client.chat('Tell me about robots.', temperature=2.0, **question).result
    assert guess.text != sure.text
    assert guess.confidence.min_logprob < sure.confidence.min_logprob
    assert guess.confidence.mean_logprob < sure.confidence.mean_logprob


def emulator_stats(llm):
    return httpx.get(llm.base_url + '/emulator/stats').json()


def test_a_deadline_stops_a_long_generation_with_the_partial_text(active):
    llm = active(model='endless:latest', env={'OLLAMA_EMULATOR_TOKEN_RATE': '50'})
    run = llm.client.chat('go', max_tokens=8192, deadline=1.0, session_id='walk')
    result = run.result
    assert run.status == GoalStatus.STATUS_ABORTED
    assert (result.error_code, result.done_reason) == (Chat.Result.DEADLINE,
                                                       Chat.Result.DONE_DEADLINE)
    assert result.error_message == 'the deadline of 1 s passed'
    assert result.text.startswith('tok0 tok1 ')
    # The session keeps no half answer: the turn is as if it had not been asked.
    assert result.session_turns == 0
    # Nothing keeps generating: the emulator saw the stream closed and is idle.
    wait_for(lambda: emulator_stats(llm)['generating'] == 0, 'the server to be idle')
    assert len(emulator_stats(llm)['disconnects']) == 1


def test_a_goal_whose_deadline_passes_in_the_queue_ends_without_running(active, tmp_path):
    log = tmp_path / 'requests.jsonl'
    llm = active(model='endless:latest', concurrency='queue', max_queued_goals=2,
                 env={'OLLAMA_EMULATOR_TOKEN_RATE': '50',
                      'OLLAMA_EMULATOR_REQUEST_LOG': str(log)})
    first = llm.client.send_chat(Chat.Goal(prompt='first', max_tokens=8192))
    assert first.wait_accepted()
    wait_for(lambda: first.feedback, 'the first goal to stream')
    late = llm.client.chat('late', deadline=0.5).result
    assert (late.error_code, late.done_reason, late.text) == (
        Chat.Result.DEADLINE, Chat.Result.DONE_DEADLINE, '')
    first.cancel()
    assert first.wait_result().error_code == Chat.Result.CANCELED
    assert [body['messages'][-1]['content'] for body in chat_requests(log)
            if body['messages']] == ['first']
