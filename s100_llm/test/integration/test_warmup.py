"""Issue 28: no slow turn after a trim, a warm first turn. After a turn whose session will
trim, the node trims it at once and warms Ollama's prompt cache with the kept history in the
background; a goal that arrives first takes precedence; activate warms the cache too."""

import json

import httpx
from s100_llm_msgs.action import Chat
from s100_llm_msgs.srv import GetSession
from s100_llm_msgs.srv import ListSessions

from harness import wait_for

# The scripted models' prompt evaluation, slowed so that a warm-up is still running when the
# next goal arrives (tokens/s; a warm-up of the kept history below takes seconds).
PROMPT_RATE = '20'


def requests(log_path):
    """Every /api/chat request body that reached the server, in order, parsed."""
    if not log_path.exists():
        return []
    with open(log_path) as stream:
        return [json.loads(json.loads(line)['body']) for line in stream]


def warm_ups(log_path):
    """The messages of each warm-up request (num_predict 1), in order."""
    return [body['messages'] for body in requests(log_path)
            if body['options'].get('num_predict') == 1]


def goals(log_path):
    """The messages of each goal's request, in order."""
    return [body['messages'] for body in requests(log_path)
            if body['options'].get('num_predict') != 1 and body['messages']]


def kept_history(llm, session_id):
    """The session's system prompt and kept turns as the node sends them."""
    stored = llm.client._call(GetSession, '/llm/get_session',
                              GetSession.Request(session_id=session_id))
    history = [{'role': 'system', 'content': stored.system_prompt}] if stored.system_prompt \
        else []
    return history + [{'role': m.role, 'content': m.content} for m in stored.messages]


def talk(llm, session_id, questions, **fields):
    results = []
    for index, question in enumerate(questions):
        result = llm.client.chat(question, session_id=session_id,
                                 system_prompt='You are a home robot.' if index == 0 else '',
                                 **fields).result
        assert result.error_code == Chat.Result.NONE, result.error_message
        results.append(result)
    return results


QUESTIONS = ['Hello robot!', 'What can you carry?', 'Is the kitchen clean?',
             'Where is the cat?', 'Open the door.', 'What time is it?']


def test_after_a_trim_the_kept_history_is_warmed_and_the_next_turn_evaluates_little(
        active, tmp_path):
    """session_max_turns 4: the 5th turn's commit keeps 2 turns; the node then evaluates
    them (the request log shows it) and the 6th turn evaluates only its own tokens
    (llama-server's prompt_eval_count: the tokens not reused), fewer than the kept history's
    (which it would evaluate again without the warm-up). The real SmolLM2 through llama.cpp,
    as Ollama 0.30+ runs it (Ollama 0.2x counts the whole prompt, cache or not)."""
    log_path = tmp_path / 'requests.jsonl'
    llm = active(model='smollm2:135m', num_thread=1, session_max_turns=4,
                 env={'OLLAMA_EMULATOR_REQUEST_LOG': str(log_path),
                      'OLLAMA_EMULATOR_RUNNER': 'llama-server'})
    talk(llm, 'robot', QUESTIONS[:5], max_tokens=16, temperature=0.0)
    kept = kept_history(llm, 'robot')
    assert len(kept) == 1 + 2 * 2
    wait_for(lambda: kept in warm_ups(log_path), 'the warm-up of the kept history')
    history_tokens = next(s.context_tokens for s in llm.client._call(
        ListSessions, '/llm/list_sessions', ListSessions.Request()).sessions
        if s.session_id == 'robot')
    sixth = talk(llm, 'robot', QUESTIONS[5:], max_tokens=16, temperature=0.0)[0]
    assert goals(log_path)[-1][:len(kept)] == kept
    assert 0 < sixth.stats.prompt_tokens < history_tokens, (sixth.stats.prompt_tokens,
                                                            history_tokens)


def stats(llm):
    return httpx.get(f'{llm.base_url}/emulator/stats').json()


def trimmed_with_a_warm_up_running(active, tmp_path):
    """A node on a scripted model whose prompts take seconds, a session trimmed after its
    5th turn, and its warm-up received by the server (still evaluating)."""
    log_path = tmp_path / 'requests.jsonl'
    llm = active(model='echo:latest', session_max_turns=4,
                 env={'OLLAMA_EMULATOR_REQUEST_LOG': str(log_path),
                      'OLLAMA_EMULATOR_PROMPT_RATE': PROMPT_RATE})
    talk(llm, 'robot', [f'question {index} ' + 'word ' * 10 for index in range(5)],
         max_tokens=4)
    kept = kept_history(llm, 'robot')
    wait_for(lambda: kept in warm_ups(log_path), 'the warm-up of the kept history')
    return llm, log_path, kept


def test_a_goal_of_another_session_cancels_the_warm_up(active, tmp_path):
    """The warm-up is of no use to another conversation: closing its stream stops it, and the
    other session's goal is served at once (the server saw the warm-up's client go)."""
    llm, log_path, kept = trimmed_with_a_warm_up_running(active, tmp_path)
    before = len(stats(llm)['disconnects'])
    result = llm.client.chat('hi', session_id='other', max_tokens=4).result
    assert result.error_code == Chat.Result.NONE, result.error_message
    assert len(stats(llm)['disconnects']) == before + 1     # the warm-up, canceled
    assert warm_ups(log_path)[-1] == kept
    assert goals(log_path)[-1] == [{'role': 'user', 'content': 'hi'}]


def test_a_goal_of_the_same_session_waits_for_its_warm_up_which_finishes(active, tmp_path):
    """The warm-up evaluates the goal's own prefix: the goal's request is sent after it
    finished (not canceled), and starts with the history it warmed."""
    llm, log_path, kept = trimmed_with_a_warm_up_running(active, tmp_path)
    before = len(stats(llm)['disconnects'])
    result = llm.client.chat('and now?', session_id='robot', max_tokens=4).result
    assert result.error_code == Chat.Result.NONE, result.error_message
    assert len(stats(llm)['disconnects']) == before     # nothing canceled
    assert goals(log_path)[-1] == kept + [{'role': 'user', 'content': 'and now?'}]


def test_a_canceled_goal_waiting_for_a_warm_up_ends_at_once(active, tmp_path):
    """A goal that waits for its session's warm-up and is canceled ends canceled, without
    waiting for the warm-up (which is canceled with it)."""
    llm, log_path, kept = trimmed_with_a_warm_up_running(active, tmp_path)
    before = len(stats(llm)['disconnects'])
    run = llm.client.send_chat(Chat.Goal(prompt='and now?', session_id='robot', max_tokens=4))
    assert run.wait_accepted()
    run.cancel()
    result = run.wait_result()
    assert result.error_code == Chat.Result.CANCELED, result.error_message
    assert len(stats(llm)['disconnects']) == before + 1     # the warm-up
    assert all(goal[-1]['content'] != 'and now?' for goal in goals(log_path))   # never sent


def test_activate_warms_the_system_prompt_of_the_last_session(start_llm, tmp_path):
    """Activate evaluates the system prompt the first turn most likely starts with: without
    any session a bare system message; then the most recently used session's (a sessions file
    keeps them across a restart; here the node keeps them from one activation to the next).
    Every goal waits for it: none cancels it."""
    log_path = tmp_path / 'requests.jsonl'
    llm = start_llm(env={'OLLAMA_EMULATOR_REQUEST_LOG': str(log_path)})
    llm.activate()
    # (the ollama client leaves an empty content out)
    wait_for(lambda: warm_ups(log_path) == [[{'role': 'system'}]], 'the warm-up at activate')
    llm.client.chat('one', session_id='older', system_prompt='be kind')
    llm.client.chat('two', session_id='newer', system_prompt='be brief')
    llm.client.chat('three', session_id='older')
    llm.client.chat('four', session_id='newer')
    assert llm.client.change_state('deactivate') and llm.client.change_state('activate')
    assert llm.client.chat('first', session_id='another').result.error_code == \
        Chat.Result.NONE
    assert warm_ups(log_path)[-1] == [{'role': 'system', 'content': 'be brief'}]
    assert stats(llm)['disconnects'] == []
