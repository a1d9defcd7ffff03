from s100_llm.core.sessions import SessionStore


def test_single_turn_has_no_memory():
    store = SessionStore(max_turns=5, max_sessions=5)
    assert store.messages('', 'be brief', 'hi') == [
        {'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'hi'}]
    assert len(store) == 0


def test_session_remembers_turns_and_system_prompt():
    store = SessionStore(max_turns=5, max_sessions=5)
    assert store.commit('s', 'be brief', 'one', 'first answer') == 1
    messages = store.messages('s', '', 'two')
    assert messages == [{'role': 'system', 'content': 'be brief'},
                        {'role': 'user', 'content': 'one'},
                        {'role': 'assistant', 'content': 'first answer'},
                        {'role': 'user', 'content': 'two'}]


def test_session_keeps_the_last_max_turns():
    store = SessionStore(max_turns=2, max_sessions=5)
    for index in range(5):
        store.commit('s', '', f'q{index}', f'a{index}')
    contents = [m['content'] for m in store.messages('s', '', 'next')]
    assert contents == ['q3', 'a3', 'q4', 'a4', 'next']
    assert store.turn_count('s') == 2


def test_trimming_to_the_context_drops_oldest_turns_first():
    store = SessionStore(max_turns=50, max_sessions=5)
    for index in range(10):
        store.commit('s', '', 'x' * 40, f'answer {index}')
    messages = store.messages('s', '', 'final', context_tokens=40)   # ~160 characters
    assert messages[-1]['content'] == 'final'
    assert sum(len(m['content']) for m in messages) <= 160
    assert messages[-2]['content'] == 'answer 9'


def test_reset_and_least_recently_used_eviction():
    store = SessionStore(max_turns=5, max_sessions=2)
    store.commit('a', '', 'q', 'a')
    store.commit('b', '', 'q', 'a')
    store.commit('a', '', 'q2', 'a2')      # a is now the most recently used
    store.commit('c', '', 'q', 'a')
    assert 'b' not in store and 'a' in store and 'c' in store
    store.reset('a')
    assert 'a' not in store


def test_caller_context_is_used_for_single_turns():
    store = SessionStore(max_turns=5, max_sessions=5)
    context = [{'role': 'user', 'content': 'earlier'}, {'role': 'assistant', 'content': 'ok'}]
    assert store.messages('', '', 'now', context)[:2] == context


def test_a_tool_exchange_is_kept_whole_and_trimmed_with_its_call():
    store = SessionStore(max_turns=2, max_sessions=5)
    call = {'function': {'name': 'say', 'arguments': {'text': 'hi'}}}
    store.commit('s', '', 'say hi', '', tool_calls=[call])
    result = {'tool_call_id': 'call_1', 'name': 'say', 'content': 'said'}
    assert store.messages('s', '', '', tool_results=[result])[-1] == {
        'role': 'tool', 'content': 'said', 'tool_name': 'say'}
    assert store.commit('s', '', '', 'I said hi', tool_results=[result]) == 2
    assert store.messages('s', '', 'next') == [
        {'role': 'user', 'content': 'say hi'},
        {'role': 'assistant', 'content': '', 'tool_calls': [call]},
        {'role': 'tool', 'content': 'said', 'tool_name': 'say'},
        {'role': 'assistant', 'content': 'I said hi'},
        {'role': 'user', 'content': 'next'}]
    # Dropping the turn with the call drops the results that answer it.
    store.commit('s', '', 'q', 'a')
    assert [m['content'] for m in store.messages('s', '', 'next')] == ['q', 'a', 'next']


def test_a_tool_chain_longer_than_max_turns_keeps_its_newest_turn():
    """Each turn answers the previous one's call: trimming must not take the newest with it."""
    store = SessionStore(max_turns=2, max_sessions=5)
    call = {'function': {'name': 'step', 'arguments': {}}}
    store.commit('s', '', 'go', '', tool_calls=[call], call_ids=['c1'])
    for number in (2, 3):
        result = {'tool_call_id': f'c{number - 1}', 'name': 'step', 'content': f'r{number}'}
        assert store.commit('s', '', '', '', tool_results=[result], tool_calls=[call],
                            call_ids=[f'c{number}']) >= 1
    assert store.pending_calls('s') == {'c3': 'step'}
    sent = store.messages('s', '', '', tool_results=[
        {'tool_call_id': 'c3', 'name': 'step', 'content': 'r4'}])
    # The call the new result answers is still there, right before it.
    assert sent[-2] == {'role': 'assistant', 'content': '', 'tool_calls': [call]}
    assert sent[-1] == {'role': 'tool', 'content': 'r4', 'tool_name': 'step'}


def test_trimming_to_the_context_keeps_the_call_that_the_results_answer():
    store = SessionStore(max_turns=5, max_sessions=5)
    call = {'function': {'name': 'say', 'arguments': {}}}
    store.commit('s', '', 'x' * 400, '', tool_calls=[call], call_ids=['c1'])
    sent = store.messages('s', '', '', context_tokens=10, tool_results=[
        {'tool_call_id': 'c1', 'name': 'say', 'content': 'said'}])
    assert [m['role'] for m in sent] == ['user', 'assistant', 'tool']
