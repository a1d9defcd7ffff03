import json
import os
import socket
import stat
import subprocess
import sys

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


def session_entry(**fields):
    entry = {'session_id': 's', 'system_prompt': '', 'base_tokens': 0, 'updated': 0,
             'turns': [{'messages': [{'role': 'user', 'content': 'x'}], 'call_ids': [],
                        'tokens': 0}]}
    entry.update(fields)
    return entry


def sessions_document(*entries):
    return json.dumps({'version': 1, 'sessions': list(entries)}).encode()


@pytest.mark.parametrize('content, cause', [
    (b'{"version": 1, "sessions": [{"session_id": "s", "system_prompt": "", "base_tokens": 0,'
     b' "updated": Infinity, "turns": []}]}', 'Infinity is not a JSON number'),
    (b'{"version": 1, "sessions": [{"session_id": "s", "system_prompt": "", "base_tokens": 0,'
     b' "updated": NaN, "turns": []}]}', 'NaN is not a JSON number'),
    (b'{"version": 1, "sessions": [{"session_id": "s", "system_prompt": "",'
     b' "base_tokens": Infinity, "updated": 0, "turns": []}]}', 'Infinity is not a JSON number'),
    (b'{"version": 1, "sessions": [{"session_id": "s", "system_prompt": "", "base_tokens": 0,'
     b' "updated": 1e999, "turns": []}]}', '1e999 is out of range'),
    (sessions_document(session_entry(updated=1e12)), 'updated must be a time in seconds'),
    (sessions_document(session_entry(updated=-1)), 'updated must be a time in seconds'),
    (sessions_document(session_entry(updated='now')), 'updated must be a time in seconds'),
    (sessions_document(session_entry(base_tokens=2 ** 40)), 'base_tokens must be an integer'),
    (sessions_document(session_entry(base_tokens=1.5)), 'base_tokens must be an integer'),
    (sessions_document(session_entry(turns=[{'messages': [{'role': 'user', 'content': 'x'}],
                                             'call_ids': [], 'tokens': 2 ** 32}])),
     'tokens must be an integer from 0 to 4294967295'),
    (sessions_document(session_entry(session_id='\ud800')), 'session_id must be'),
    (sessions_document(session_entry(system_prompt='a\udfffb')), 'system_prompt must be text'),
    (sessions_document(session_entry(turns=[{'messages': [{'role': 'user', 'content': '\ud800'}],
                                             'call_ids': [], 'tokens': 0}])),
     'text content'),
    (sessions_document(session_entry(turns=[{'messages': [{'role': 'user', 'content': 'x'}],
                                             'call_ids': ['\ud800'], 'tokens': 0}])),
     'call_ids must be a list of text'),
])
def test_values_a_ros_message_cannot_carry_make_the_file_corrupt(tmp_path, content, cause):
    path = tmp_path / 'sessions.json'
    path.write_bytes(content)
    log = RecordedLog()
    assert session_file.load(str(path), log) == []
    assert not path.exists()
    (level, line), = log
    assert level == 'warn' and cause in line and 'moved to' in line, line


def test_every_loaded_value_fits_the_session_messages():
    """The bounds' edges load: uint32 counts, an int32 time."""
    top = session_file.UINT32_MAX
    (session_id, session), = session_file.parse(sessions_document(session_entry(
        base_tokens=top, updated=session_file.INT32_MAX,
        turns=[{'messages': [{'role': 'user', 'content': 'ü ✓ 😀'}], 'call_ids': [],
                'tokens': top}])))
    assert session.base_tokens == top and session.turns[0].tokens == top


def _writer(store=None):
    log = RecordedLog()
    store = SessionStore(max_turns=20, max_sessions=10) if store is None else store
    return SessionWriter(store, log), log


def _not_a_file(tmp_path, kind):
    path = tmp_path / 'sessions.json'
    if kind == 'FIFO':
        os.mkfifo(path)
    elif kind == 'directory':
        path.mkdir()
    elif kind == 'character device':    # a copy of /dev/zero: read, it never ends
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.stat('/dev/zero').st_rdev)
        except PermissionError:
            pytest.skip('making a device node needs root (CAP_MKNOD)')
    elif kind == 'socket':
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.close()
    return path


@pytest.mark.parametrize('kind', ['FIFO', 'directory', 'socket', 'character device'])
def test_what_is_not_a_regular_file_is_refused_and_left_in_place(tmp_path, kind):
    path = _not_a_file(tmp_path, kind)
    before = os.lstat(path)
    writer, log = _writer()
    with pytest.raises(SessionFileError, match=f'is a {kind}, not a regular file'):
        writer.use(str(path))     # a FIFO would block here if it were opened to be read
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sessions.json'] and not log


def test_dev_null_is_refused_and_not_touched():
    before = os.stat('/dev/null')
    writer, log = _writer()
    with pytest.raises(SessionFileError, match='is a character device, not a regular file'):
        writer.use('/dev/null')
    after = os.stat('/dev/null')
    assert (after.st_ino, after.st_mode, after.st_rdev) == (
        before.st_ino, before.st_mode, before.st_rdev)
    assert not [name for name in os.listdir('/dev') if name.startswith('null.')] and not log


def test_a_fifo_put_there_after_the_check_is_not_waited_for(tmp_path):
    path = tmp_path / 'sessions.json'
    os.mkfifo(path)
    with pytest.raises(SessionFileError, match='is a FIFO'):
        session_file.read(str(path))


def test_a_file_over_the_size_bound_is_refused_and_kept(tmp_path, monkeypatch):
    path = tmp_path / 'sessions.json'
    sessions = filled_store().snapshot()
    session_file.save(str(path), sessions)
    content = path.read_bytes()
    monkeypatch.setattr(session_file, 'MAX_FILE_BYTES', len(content) - 1)
    writer, log = _writer()
    with pytest.raises(SessionFileError, match=f'holds {len(content)} bytes, more than the '
                                               f'{len(content) - 1} a sessions file may hold'):
        writer.use(str(path))
    assert path.read_bytes() == content and not log
    with pytest.raises(ValueError, match='more than the'):    # the writer makes none
        session_file.save(str(path), sessions)
    assert path.read_bytes() == content


def test_a_symbolic_link_is_followed_and_stays_a_link(tmp_path):
    target = tmp_path / 'disk' / 'sessions.json'
    target.parent.mkdir()
    session_file.save(str(target), filled_store(sessions=('a',)).snapshot())
    link = tmp_path / 'sessions.json'
    link.symlink_to(target)
    store = SessionStore(max_turns=20, max_sessions=10)
    writer, log = _writer(store)
    store.on_change = writer.changed
    assert writer.use(str(link)) == {'path': os.path.realpath(target), 'sessions': 1,
                                     'turns': 3}
    store.commit('b', '', store.prompt('b', '', 'hello'), 'hi')
    assert writer.flush()
    assert link.is_symlink() and os.readlink(link) == str(target), log
    assert sorted(dict(session_file.load(str(target), RecordedLog()))) == ['a', 'b'], log
    writer.close()


def test_a_dangling_link_gets_its_target_written(tmp_path):
    target = tmp_path / 'sessions.json'
    link = tmp_path / 'link.json'
    link.symlink_to(target)
    store = SessionStore(max_turns=20, max_sessions=10)
    writer, _ = _writer(store)
    store.on_change = writer.changed
    assert writer.use(str(link))['sessions'] == 0
    store.commit('a', '', store.prompt('a', '', 'hello'), 'hi')
    assert writer.flush()
    assert link.is_symlink() and list(dict(session_file.load(str(target), RecordedLog()))) == ['a']
    writer.close()


def test_a_second_writer_on_one_file_is_refused_until_the_first_closes(tmp_path):
    path = os.path.realpath(tmp_path / 'sessions.json')
    session_file.save(path, filled_store(sessions=('a',)).snapshot())
    first, _ = _writer()
    first.use(path)
    second_store = SessionStore(max_turns=20, max_sessions=10)
    second, log = _writer(second_store)
    with pytest.raises(SessionFileError, match=f'is in use by another node \\(process '
                                               f'{os.getpid()} holds {path}.lock\\)'):
        second.use(path)
    assert len(second_store) == 0 and not log
    first.close()
    assert second.use(path)['sessions'] == 1
    second.close()


def test_the_lock_of_a_killed_process_goes_with_it(tmp_path):
    path = os.path.realpath(tmp_path / 'sessions.json')
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time\n'
         'from s100_llm.core import session_file\n'
         f'session_file.lock({path!r})\n'
         'print("locked", flush=True)\n'
         'time.sleep(600)\n'], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'locked\n'
        with pytest.raises(SessionFileError, match=f'process {holder.pid} holds'):
            session_file.lock(path)
    finally:
        holder.kill()
        holder.wait()
    os.close(session_file.lock(path))


def test_a_file_on_a_kernel_file_system_is_refused_with_that_reason():
    writer, _ = _writer()
    with pytest.raises(SessionFileError, match=r'sessions_file /proc/foo/sessions.json is on '
                                               r'/proc, a kernel file system \(proc\)'):
        writer.use('/proc/foo/sessions.json')


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
        session_file.check_path(str(tmp_path))


def test_the_writer_writes_after_each_change_and_loads_within_bounds(tmp_path):
    path = str(tmp_path / 'sessions.json')
    session_file.save(path, filled_store(turns=9, sessions='abcd').snapshot())
    store = SessionStore(max_turns=8, max_sessions=3)
    writer = SessionWriter(store, RecordedLog())
    store.on_change = writer.changed
    assert writer.use(path) == {'path': os.path.realpath(path), 'sessions': 3, 'turns': 12}
    sent = store.prompt('d', '', 'more')
    store.commit('d', '', sent, 'answer')
    assert writer.flush()
    reloaded = dict(session_file.load(path, RecordedLog()))
    assert sorted(reloaded) == ['b', 'c', 'd'] and reloaded['d'].turn_count == 5
    store.reset('b')
    assert writer.flush()
    assert sorted(dict(session_file.load(path, RecordedLog()))) == ['c', 'd']
