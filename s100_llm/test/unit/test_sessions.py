import json
import math

from s100_llm.core.sessions import context_budget
from s100_llm.core.sessions import estimate
from s100_llm.core.sessions import SessionStore


def sent(store, *arguments, **fields):
    """The messages a goal would send."""
    return store.prompt(*arguments, **fields).messages


def turn(store, session_id, prompt, answer, system_prompt='', budget=0, tool_results=(),
         tool_calls=(), call_ids=(), counts=(0, 0)):
    """One goal as ChatRun does it: the prompt sent, then the commit; returns (messages sent,
    the session's turns)."""
    sent = store.prompt(session_id, system_prompt, prompt, budget_tokens=budget,
                        tool_results=tool_results)
    turns = store.commit(session_id, system_prompt, sent, answer, tool_calls, call_ids,
                         *counts)
    return sent.messages, turns


def test_single_turn_has_no_memory():
    store = SessionStore(max_turns=5, max_sessions=5)
    assert sent(store, '', 'be brief', 'hi') == [
        {'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'hi'}]
    assert len(store) == 0


def test_session_remembers_turns_and_system_prompt():
    store = SessionStore(max_turns=5, max_sessions=5)
    assert turn(store, 's', 'one', 'first answer', 'be brief')[1] == 1
    messages = sent(store, 's', '', 'two')
    assert messages == [{'role': 'system', 'content': 'be brief'},
                        {'role': 'user', 'content': 'one'},
                        {'role': 'assistant', 'content': 'first answer'},
                        {'role': 'user', 'content': 'two'}]


def test_beyond_max_turns_the_oldest_half_is_dropped_in_one_block():
    store = SessionStore(max_turns=4, max_sessions=5)
    kept = []
    for index in range(7):
        turn(store, 's', f'q{index}', f'a{index}')
        kept.append(store.turn_count('s'))
    # 5 turns exceed 4: the newest 2 stay; then the session grows again to 4.
    assert kept == [1, 2, 3, 4, 2, 3, 4]
    contents = [m['content'] for m in sent(store, 's', '', 'next')]
    assert contents == ['q3', 'a3', 'q4', 'a4', 'q5', 'a5', 'q6', 'a6', 'next']


def serialized(messages):
    return json.dumps(messages)


def test_what_is_sent_only_grows_at_the_end_except_at_rare_trim_points():
    """30 turns with a turn limit of 8: the JSON of turn N+1's messages starts with turn N's
    (its history plus its answer), except at trim points, which are at most ceil(30 / 4)."""
    max_turns = 8
    store = SessionStore(max_turns=max_turns, max_sessions=5)
    previous = None
    trims = 0
    for index in range(30):
        messages, _ = turn(store, 's', f'question {index} ' * 5, f'answer {index} ' * 20,
                           system_prompt='be brief' if index == 0 else '',
                           budget=context_budget(4096, 8192))
        if previous is not None:
            grown = serialized(messages).startswith(serialized(previous)[:-1])
            trims += not grown
        previous = messages + [{'role': 'assistant', 'content': f'answer {index} ' * 20}]
    assert 1 <= trims <= math.ceil(30 / (max_turns / 2))


def test_the_context_budget_trims_in_a_block_to_half_and_then_grows_again():
    store = SessionStore(max_turns=1000, max_sessions=5)
    budget = 400     # tokens; a turn takes about 2 x (100 / 4 + 4) = 58 by the estimate
    sizes, trims, previous = [], 0, None
    for index in range(40):
        messages, _ = turn(store, 's', f'q{index:03d}' + 'x' * 96, f'a{index:03d}' + 'y' * 96,
                           budget=budget)
        if previous is not None and not serialized(messages).startswith(
                serialized(previous)[:-1]):
            trims += 1
        previous = messages + [{'role': 'assistant', 'content': f'a{index:03d}' + 'y' * 96}]
        sizes.append(len(messages))
    assert max(sizes) * 58 // 2 <= budget + 58   # never far over the budget
    assert 3 <= trims <= 40 // 3                 # blocks of about half: a trim every 3+ turns
    assert messages[-1]['content'].startswith('q039')


def test_the_budget_leaves_room_for_the_answer():
    assert context_budget(4096, 100) == 3996
    assert context_budget(4096, 8192) == 3072    # at most a quarter of the context
    assert context_budget(0, 100) == 0           # unknown context: no limit


def test_trimming_to_the_context_drops_oldest_turns_first():
    store = SessionStore(max_turns=50, max_sessions=5)
    for index in range(10):
        turn(store, 's', 'x' * 40, f'answer {index}')
    messages = sent(store, 's', '', 'final', budget_tokens=60)
    assert messages[-1]['content'] == 'final'
    assert messages[-2]['content'] == 'answer 9'
    assert len(messages) < 21


def test_reset_and_least_recently_used_eviction():
    changes = []
    store = SessionStore(max_turns=5, max_sessions=2, on_change=lambda: changes.append(1))
    turn(store, 'a', 'q', 'a')
    turn(store, 'b', 'q', 'a')
    turn(store, 'a', 'q2', 'a2')      # a is now the most recently used
    turn(store, 'c', 'q', 'a')
    assert 'b' not in store and 'a' in store and 'c' in store
    assert [session_id for session_id, _ in store.snapshot()] == ['a', 'c']
    store.reset('a')
    assert 'a' not in store
    assert len(changes) == 5


def test_caller_context_is_used_for_single_turns():
    store = SessionStore(max_turns=5, max_sessions=5)
    context = [{'role': 'user', 'content': 'earlier'}, {'role': 'assistant', 'content': 'ok'}]
    assert sent(store, '', '', 'now', context)[:2] == context


def test_a_tool_exchange_is_kept_whole_and_trimmed_with_its_call():
    store = SessionStore(max_turns=2, max_sessions=5)
    call = {'function': {'name': 'say', 'arguments': {'text': 'hi'}}}
    turn(store, 's', 'say hi', '', tool_calls=[call], call_ids=['call_1'])
    result = {'tool_call_id': 'call_1', 'name': 'say', 'content': 'said'}
    assert sent(store, 's', '', '', tool_results=[result])[-1] == {
        'role': 'tool', 'content': 'said', 'tool_name': 'say'}
    assert turn(store, 's', '', 'I said hi', tool_results=[result])[1] == 2
    assert sent(store, 's', '', 'next') == [
        {'role': 'user', 'content': 'say hi'},
        {'role': 'assistant', 'content': '', 'tool_calls': [call]},
        {'role': 'tool', 'content': 'said', 'tool_name': 'say'},
        {'role': 'assistant', 'content': 'I said hi'},
        {'role': 'user', 'content': 'next'}]
    # Dropping the turn with the call drops the results that answer it.
    turn(store, 's', 'q', 'a')
    assert [m['content'] for m in sent(store, 's', '', 'next')] == ['q', 'a', 'next']


def test_a_tool_chain_longer_than_max_turns_keeps_its_newest_turn():
    """Each turn answers the previous one's call: trimming must not take the newest with it."""
    store = SessionStore(max_turns=2, max_sessions=5)
    call = {'function': {'name': 'step', 'arguments': {}}}
    turn(store, 's', 'go', '', tool_calls=[call], call_ids=['c1'])
    for number in (2, 3):
        result = {'tool_call_id': f'c{number - 1}', 'name': 'step', 'content': f'r{number}'}
        assert turn(store, 's', '', '', tool_results=[result], tool_calls=[call],
                    call_ids=[f'c{number}'])[1] >= 1
    assert store.pending_calls('s') == {'c3': 'step'}
    messages = sent(store, 's', '', '', tool_results=[
        {'tool_call_id': 'c3', 'name': 'step', 'content': 'r4'}])
    # The call the new result answers is still there, right before it.
    assert messages[-2] == {'role': 'assistant', 'content': '', 'tool_calls': [call]}
    assert messages[-1] == {'role': 'tool', 'content': 'r4', 'tool_name': 'step'}


def test_trimming_to_the_context_keeps_the_call_that_the_results_answer():
    store = SessionStore(max_turns=5, max_sessions=5)
    call = {'function': {'name': 'say', 'arguments': {}}}
    turn(store, 's', 'x' * 400, '', tool_calls=[call], call_ids=['c1'])
    messages = sent(store, 's', '', '', budget_tokens=10, tool_results=[
        {'tool_call_id': 'c1', 'name': 'say', 'content': 'said'}])
    assert [m['role'] for m in messages] == ['user', 'assistant', 'tool']


def test_a_trim_for_the_context_is_kept_at_commit_but_not_by_a_failed_turn():
    store = SessionStore(max_turns=50, max_sessions=5)
    for index in range(10):
        turn(store, 's', 'x' * 40, f'answer {index}')
    store.prompt('s', '', 'failed', budget_tokens=100)   # never committed
    assert store.turn_count('s') == 10
    turn(store, 's', 'ok', 'fine', budget=100)
    assert store.turn_count('s') < 10
    assert store.get('s').turns[-1].messages[0]['content'] == 'ok'


def test_token_counts_follow_the_model_whether_the_history_was_cached_or_not():
    store = SessionStore(max_turns=50, max_sessions=5)
    # First turn: 50 prompt tokens evaluated (system + question), 20 generated.
    turn(store, 's', 'q' * 40, 'a' * 80, system_prompt='s' * 160, counts=(50, 20))
    first = store.get('s')
    assert 0 < first.base_tokens < 50
    assert first.context_tokens == 70
    # Second turn reusing the cached history: only its 15 new tokens were evaluated.
    turn(store, 's', 'q' * 40, 'a' * 40, counts=(15, 10))
    assert store.get('s').context_tokens == 70 + 25
    # Third turn after another session took the cache slot: everything evaluated again.
    turn(store, 's', 'q' * 40, 'a' * 40, counts=(95 + 14, 12))
    assert store.get('s').context_tokens == 95 + 14 + 12
    # After a trim (or another session with the same system prompt): only the system prompt
    # came from the cache.
    history = store.get('s').context_tokens
    turn(store, 's', 'q' * 40, 'a' * 40, counts=(history - first.base_tokens + 14, 12))
    assert store.get('s').context_tokens == history + 14 + 12
    # No counts reported: the estimate stands in for the turn.
    turn(store, 's', 'q' * 40, 'a' * 40)
    assert store.get('s').turns[-1].tokens == 0
    assert store.get('s').context_tokens > history + 14 + 12


def test_token_counts_follow_a_server_that_counts_the_whole_prompt_every_turn():
    """Ollama 0.2x: prompt_eval_count is the whole prompt even when the cache was reused; the
    same rule reads it as nothing reused, before and after a block trim."""
    store = SessionStore(max_turns=4, max_sessions=5)
    turn(store, 's', 'q' * 40, 'a' * 80, system_prompt='s' * 160, counts=(50, 20))
    for _ in range(6):
        history = store.get('s').context_tokens    # every stored turn is sent again
        # The new question takes 16 tokens (the estimate says 14), the answer 12.
        turn(store, 's', 'q' * 40, 'a' * 40, counts=(history + 16, 12))
        assert store.get('s').turns[-1].tokens == 16 + 12
    assert store.get('s').turn_count < 7        # a trim happened on the way


def test_sessions_loaded_beyond_the_bounds_are_trimmed():
    source = SessionStore(max_turns=20, max_sessions=10)
    for name in 'abcd':
        for index in range(9):
            turn(source, name, f'q{index}', f'a{index}')
    store = SessionStore(max_turns=8, max_sessions=3)
    store.replace_all(source.snapshot())
    assert [session_id for session_id, _ in store.snapshot()] == ['b', 'c', 'd']
    assert store.turn_count('d') == 4


def turn_ahead(store, session_id, prompt, answer, budget=0, **fields):
    """One goal as ChatRun does it with warm-ups: prompt, commit, then trim_ahead; returns
    (messages sent, what trim_ahead says to evaluate)."""
    sent = store.prompt(session_id, fields.pop('system_prompt', ''), prompt,
                        budget_tokens=budget, **fields)
    store.commit(session_id, '', sent, answer)
    return sent.messages, store.trim_ahead(session_id, sent, budget)


def test_trim_ahead_trims_when_the_next_turn_would_and_then_no_turn_trims():
    """Issue 28: with the budget rule predicted after each turn, the session is trimmed
    right after the turn whose successor would have trimmed, every later prompt starts with
    what the previous turn evaluated or with what trim_ahead said to evaluate, and a turn's
    own prompt never trims (sent.dropped stays 0)."""
    store = SessionStore(max_turns=1000, max_sessions=5)
    budget = 400     # tokens; a turn takes about 2 x (100 / 4 + 4) = 58 by the estimate
    cached, warmed = None, 0
    for index in range(40):
        prompt = f'q{index:03d}' + 'x' * 96
        sent = store.prompt('s', 'be brief', prompt, budget_tokens=budget)
        assert sent.dropped == 0
        if cached is not None:
            assert serialized(sent.messages).startswith(serialized(cached)[:-1])
        store.commit('s', 'be brief', sent, f'a{index:03d}' + 'y' * 96)
        warm = store.trim_ahead('s', sent, budget)
        if warm is not None:
            warmed += 1
            assert warm[0] == {'role': 'system', 'content': 'be brief'}
            assert estimate(warm) <= budget / 2 + 58
            assert warm[-1]['content'] == f'a{index:03d}' + 'y' * 96   # the last answer stays
            cached = warm
        else:
            cached = sent.messages + [store.get('s').turns[-1].messages[-1]]
    assert 3 <= warmed <= 40 // 3


def test_trim_ahead_does_not_trim_a_session_that_fits():
    store = SessionStore(max_turns=1000, max_sessions=5)
    for index in range(5):
        assert turn_ahead(store, 's', f'question {index}', 'answer', budget=4000)[1] is None
    assert store.turn_count('s') == 5
    assert turn_ahead(store, 's', 'no budget', 'answer', budget=0)[1] is None


def test_trim_ahead_warms_after_the_turn_limit_trimmed_at_commit():
    """A trim by max_turns happens at commit: the next prompt starts elsewhere than the one
    just evaluated, so trim_ahead says to evaluate the kept turns (and drops nothing more)."""
    store = SessionStore(max_turns=4, max_sessions=5)
    warms = [turn_ahead(store, 's', f'q{index}', f'a{index}')[1] for index in range(6)]
    assert warms[:4] == [None] * 4 and warms[5] is None
    assert [m['content'] for m in warms[4]] == ['q3', 'a3', 'q4', 'a4']
    assert [m['content'] for m in sent(store, 's', '', 'next')][:4] == ['q3', 'a3', 'q4', 'a4']


def test_trim_ahead_keeps_the_turn_whose_calls_the_next_goal_answers():
    store = SessionStore(max_turns=5, max_sessions=5)
    call = {'function': {'name': 'say', 'arguments': {}}}
    turn(store, 's', 'x' * 400, 'first')
    sent_ = store.prompt('s', '', 'y' * 400)
    store.commit('s', '', sent_, '', [call], ['c1'])
    warm = store.trim_ahead('s', sent_, 150)
    assert [m['content'] for m in warm] == ['y' * 400, '']
    assert store.pending_calls('s') == {'c1': 'say'}


def test_trim_ahead_of_no_session_or_a_single_turn_goal_is_nothing():
    store = SessionStore(max_turns=5, max_sessions=5)
    assert store.trim_ahead('nobody', store.prompt('', '', 'hi', budget_tokens=10), 10) is None


def test_trim_ahead_takes_the_models_count_of_a_request_over_the_estimate():
    """A request the model counts as few tokens (a long word: the scripted models count
    words) is not predicted by its characters: the session is not trimmed ahead when it fits
    by the model's counts, as prompt() would not trim it either."""
    store = SessionStore(max_turns=5, max_sessions=5)
    sent_ = store.prompt('s', '', 'x' * 4000)
    store.commit('s', '', sent_, 'ok', prompt_eval_count=4, eval_count=2)
    assert store.trim_ahead('s', sent_, 100) is None
    assert store.turn_count('s') == 1
    assert store.prompt('s', '', 'more', budget_tokens=100).dropped == 0
