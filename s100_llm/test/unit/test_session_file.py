import json
import os

import pytest

from s100_llm.core import session_file
from s100_llm.core.session_file import SessionFileError
from s100_llm.core.session_file import SessionWriter
from s100_llm.core.sessions import SessionStore
from support import RecordedLog


def filled_store(turns=3, sessions=('a', 'b')):
    store = SessionStore(max_turns=20, max_sessions=10)
    call = {'function': {'name': 'say', 'arguments': {'text': 'hi'}}}
    for session_id in sessions:
        for index in range(turns):
            sent = store.prompt(session_id, 'be kind', f'q{index} ✓')
            store.commit(session_id, 'be kind', sent, f'a{index}', [call], ['call_1'], 20, 5)
    return store


def test_sessions_survive_a_save_and_load(tmp_path):
    path = str(tmp_path / 'sessions.json')
    store = filled_store()
    session_file.save(path, store.snapshot())
    log = RecordedLog()
    loaded = session_file.load(path, log)
    assert [session_id for session_id, _ in loaded] == ['a', 'b']
    assert loaded == store.snapshot()
    assert json.loads(open(path).read())['version'] == session_file.FORMAT_VERSION
    assert not log


def test_a_missing_file_is_no_sessions(tmp_path):
    assert session_file.load(str(tmp_path / 'none.json'), RecordedLog()) == []


@pytest.mark.parametrize('content, cause', [
    (b'{"version": 1, "sessions": [', 'is not JSON'),
    (b'\xff\xfe garbage', 'is not JSON'),
    (b'[]', 'no "version"'),
    (b'{"version": 7, "sessions": []}', 'has version 7; this node reads version 1'),
    (b'{"version": 1, "sessions": {}}', '"sessions" must be a list'),
    (b'{"version": 1, "sessions": [{"session_id": 3}]}', 'session_id must be'),
    (b'{"version": 1, "sessions": [{"session_id": "s", "system_prompt": "", "base_tokens": 0,'
     b' "updated": 0, "turns": [{"messages": [{"role": "wizard", "content": "x"}],'
     b' "call_ids": [], "tokens": 0}]}]}', 'a message needs a role'),
    (b'{"version": 1, "sessions": [{"session_id": "s", "system_prompt": "", "base_tokens": 0,'
     b' "updated": 0, "turns": [{"messages": [{"role": "user", "content": "x"}],'
     b' "call_ids": [], "tokens": "many"}]}]}', 'tokens must be an integer'),
])
def test_a_corrupt_file_is_moved_aside_with_the_cause(tmp_path, content, cause):
    path = tmp_path / 'sessions.json'
    path.write_bytes(content)
    log = RecordedLog()
    assert session_file.load(str(path), log) == []
    assert not path.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith('sessions.json.corrupt-')]
    assert len(aside) == 1 and aside[0].read_bytes() == content
    (level, line), = log
    assert level == 'warn' and cause in line and str(aside[0]) in line, line


def test_an_unreadable_file_is_moved_aside(tmp_path):
    path = tmp_path / 'sessions.json'
    path.mkdir()    # open() fails on it like on an unreadable file, whoever runs the test
    log = RecordedLog()
    assert session_file.load(str(path), log) == []
    assert 'cannot be read' in log.text() and not path.exists()


def test_a_temporary_file_left_by_a_crash_is_removed_and_the_file_kept(tmp_path):
    path = str(tmp_path / 'sessions.json')
    session_file.save(path, filled_store().snapshot())
    torn = tmp_path / 'sessions.json.tmp-abc123'
    torn.write_bytes(b'{"version": 1, "sess')
    log = RecordedLog()
    assert len(session_file.load(path, log)) == 2
    assert not torn.exists() and 'interrupted write' in log.text()


def test_save_replaces_the_file_atomically_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / 'sessions.json')
    session_file.save(path, filled_store(sessions=('a',)).snapshot())
    inode = os.stat(path).st_ino
    session_file.save(path, filled_store(sessions=('a', 'b', 'c')).snapshot())
    assert os.stat(path).st_ino != inode       # a new file renamed over the old one
    assert sorted(os.listdir(tmp_path)) == ['sessions.json']
    assert len(session_file.load(path, RecordedLog())) == 3


def test_an_unwritable_directory_is_refused(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    with pytest.raises(SessionFileError, match='cannot create its directory'):
        session_file.check_writable(str(blocker / 'sub' / 'sessions.json'))
    with pytest.raises(SessionFileError, match='is a directory'):
        session_file.check_writable(str(tmp_path))


def test_the_writer_writes_after_each_change_and_loads_within_bounds(tmp_path):
    path = str(tmp_path / 'sessions.json')
    session_file.save(path, filled_store(turns=9, sessions='abcd').snapshot())
    store = SessionStore(max_turns=8, max_sessions=3)
    writer = SessionWriter(store, RecordedLog())
    store.on_change = writer.changed
    assert writer.use(path) == {'sessions': 3, 'turns': 12}
    sent = store.prompt('d', '', 'more')
    store.commit('d', '', sent, 'answer')
    assert writer.flush()
    reloaded = dict(session_file.load(path, RecordedLog()))
    assert sorted(reloaded) == ['b', 'c', 'd'] and reloaded['d'].turn_count == 5
    store.reset('b')
    assert writer.flush()
    assert sorted(dict(session_file.load(path, RecordedLog()))) == ['c', 'd']
