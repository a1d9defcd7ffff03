from s100_llm.core.sessions import SessionStore
from s100_llm.core.warmup import activate_messages


def test_activate_warms_the_system_prompt_of_the_last_session_or_a_bare_one():
    store = SessionStore(max_turns=5, max_sessions=5)
    assert activate_messages(store) == [{'role': 'system', 'content': ''}]
    for session_id, system, prompt in (('a', 'be kind', 'one'), ('b', 'be brief', 'two'),
                                       ('a', '', 'three')):
        store.commit(session_id, system, store.prompt(session_id, system, prompt), 'ok')
    assert activate_messages(store) == [{'role': 'system', 'content': 'be kind'}]
