from s100_llm.core.sessions import SessionStore
from s100_llm.core.warmup import activate_messages


def test_activate_warms_the_most_recently_used_session_or_a_bare_system_message():
    store = SessionStore(max_turns=5, max_sessions=5)
    assert activate_messages(store) == ('', [{'role': 'system', 'content': ''}])
    for session_id, system, prompt in (('a', 'be kind', 'one'), ('b', 'be brief', 'two'),
                                       ('a', '', 'three')):
        store.commit(session_id, system, store.prompt(session_id, system, prompt), 'ok')
    session_id, messages = activate_messages(store)
    assert session_id == 'a'
    assert messages == store.prompt('a', '', 'next').messages[:-1]
    assert [m['content'] for m in messages] == ['be kind', 'one', 'ok', 'three', 'ok']
