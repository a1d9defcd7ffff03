"""The sessions file: the node's conversations on disk, so that they survive a restart.

Format (JSON, FORMAT_VERSION): {"version": 1, "sessions": [{"session_id", "system_prompt",
"base_tokens", "updated", "turns": [{"messages": [...], "call_ids": [...], "tokens"}]}]},
least recently used first; messages as they are sent to Ollama.

Writes are atomic: the whole file goes to a temporary file in the same directory (flushed and
fsynced), which then replaces the file (os.replace) and the directory is fsynced; a kill -9 at
any point leaves the old file or the new one, never a torn one. A temporary file left by such
a kill is removed at the next load. A file that cannot be read or parsed, or does not hold
this format, is moved aside (<file>.corrupt-<UTC time>) and the node starts with no sessions.

SessionWriter writes on a thread of its own after each change of the store (a stored turn, a
reset): the store's lock is held only to copy the sessions, never during I/O, and the chat
that changed the store never waits for the disk. Changes made while a write runs are written
by the next one.
"""

import datetime
import json
import os
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .sessions import Session
from .sessions import SessionStore
from .sessions import Turn

FORMAT_VERSION = 1
TEMP_MARK = '.tmp-'
Log = Callable[[str, str], None]   # (level, line)


class SessionFileError(Exception):
    """The sessions file cannot be used (its directory cannot be written)."""


def expand(path: str) -> str:
    """The sessions_file parameter as an absolute path ('' stays '': no file)."""
    return os.path.abspath(os.path.expanduser(path)) if path else ''


def check_writable(path: str) -> None:
    """Create the file's directory if needed; SessionFileError when it cannot be written."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise SessionFileError(f'sessions_file {path}: cannot create its directory: '
                               f'{error.strerror}') from None
    if os.path.isdir(path):
        raise SessionFileError(f'sessions_file {path} is a directory')
    try:    # a real write: os.access() says yes to root on a read-only file system
        descriptor, probe = tempfile.mkstemp(prefix=os.path.basename(path) + TEMP_MARK,
                                             dir=directory)
    except OSError as error:
        raise SessionFileError(f'sessions_file {path}: its directory {directory} is not '
                               f'writable: {error.strerror}') from None
    os.close(descriptor)
    _unlink(probe)


def load(path: str, log: Log) -> List[Tuple[str, Session]]:
    """The sessions in the file (least recently used first); [] when there is none. A file
    that cannot be used is moved aside with a WARN naming the cause; temporary files left by
    an interrupted write are removed."""
    _remove_temporary_files(path, log)
    try:
        with open(path, 'rb') as stream:
            raw = stream.read()
    except FileNotFoundError:
        return []
    except OSError as error:
        _move_aside(path, f'cannot be read: {error.strerror}', log)
        return []
    try:
        return parse(raw)
    except ValueError as error:
        _move_aside(path, str(error), log)
        return []


def parse(raw: bytes) -> List[Tuple[str, Session]]:
    """The sessions in a file's bytes; ValueError naming what is wrong."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ValueError(f'is not JSON: {error}') from None
    if not isinstance(document, dict) or 'version' not in document:
        raise ValueError('is not a sessions file (no "version")')
    if document['version'] != FORMAT_VERSION:
        raise ValueError(f"has version {document['version']!r}; this node reads version "
                         f'{FORMAT_VERSION}')
    entries = document.get('sessions')
    _expect(isinstance(entries, list), '"sessions" must be a list')
    sessions = []
    seen = set()
    for entry in entries:
        session_id, session = _session(entry)
        _expect(session_id not in seen, f'session {session_id!r} appears twice')
        seen.add(session_id)
        sessions.append((session_id, session))
    return sessions


def _session(entry: Any) -> Tuple[str, Session]:
    _expect(isinstance(entry, dict), 'a session must be an object')
    session_id = entry.get('session_id')
    _expect(isinstance(session_id, str) and session_id, 'a session_id must be a non-empty '
            'string')
    where = f'session {session_id!r}'
    _expect(isinstance(entry.get('system_prompt'), str), f'{where}: system_prompt must be text')
    for field in ('base_tokens', 'updated'):
        value = entry.get(field)
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                f'{where}: {field} must be a number >= 0')
    turns = entry.get('turns')
    _expect(isinstance(turns, list), f'{where}: turns must be a list')
    return session_id, Session(system_prompt=entry['system_prompt'],
                               turns=[_turn(turn, where) for turn in turns],
                               base_tokens=int(entry['base_tokens']),
                               updated=float(entry['updated']))


def _turn(entry: Any, where: str) -> Turn:
    _expect(isinstance(entry, dict), f'{where}: a turn must be an object')
    messages = entry.get('messages')
    _expect(isinstance(messages, list) and messages, f'{where}: a turn needs messages')
    for message in messages:
        _expect(isinstance(message, dict)
                and message.get('role') in ('user', 'assistant', 'tool')
                and isinstance(message.get('content'), str),
                f'{where}: a message needs a role (user, assistant, tool) and text content')
        _expect(isinstance(message.get('tool_name', ''), str),
                f'{where}: tool_name must be text')
        calls = message.get('tool_calls', [])
        _expect(isinstance(calls, list) and all(
            isinstance(call, dict) and isinstance(call.get('function'), dict)
            and isinstance(call['function'].get('name'), str)
            and isinstance(call['function'].get('arguments', {}), dict) for call in calls),
            f'{where}: tool_calls must be Ollama function calls')
    call_ids = entry.get('call_ids')
    _expect(isinstance(call_ids, list) and all(isinstance(i, str) for i in call_ids),
            f'{where}: call_ids must be a list of text')
    tokens = entry.get('tokens')
    _expect(isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0,
            f'{where}: tokens must be an integer >= 0')
    return Turn(tuple(messages), tuple(call_ids), tokens)


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(f'does not hold valid sessions: {problem}')


def serialize(sessions: List[Tuple[str, Session]]) -> bytes:
    return json.dumps({'version': FORMAT_VERSION, 'sessions': [
        {'session_id': session_id, 'system_prompt': session.system_prompt,
         'base_tokens': session.base_tokens, 'updated': session.updated,
         'turns': [{'messages': list(turn.messages), 'call_ids': list(turn.call_ids),
                    'tokens': turn.tokens} for turn in session.turns]}
        for session_id, session in sessions]}, ensure_ascii=False).encode()


def save(path: str, sessions: List[Tuple[str, Session]]) -> None:
    """Replace the file with these sessions, atomically (OSError when it fails)."""
    data = serialize(sessions)
    directory, name = os.path.split(path)
    descriptor, temporary = tempfile.mkstemp(prefix=name + TEMP_MARK, dir=directory)
    try:
        with os.fdopen(descriptor, 'wb') as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        _unlink(temporary)
        raise
    # The rename itself reaches the disk with the directory's entry.
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def _move_aside(path: str, cause: str, log: Log) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')
    aside = f'{path}.corrupt-{stamp}'
    try:
        os.replace(path, aside)
    except OSError as error:
        log('warn', f'sessions file {path} {cause}; it could not be moved aside '
                    f'({error.strerror}) and will be overwritten: starting with no sessions')
        return
    log('warn', f'sessions file {path} {cause}: moved to {aside}; starting with no sessions')


def _remove_temporary_files(path: str, log: Log) -> None:
    directory, name = os.path.split(path)
    try:
        leftovers = [entry for entry in os.listdir(directory)
                     if entry.startswith(name + TEMP_MARK)]
    except OSError:
        return
    for entry in leftovers:
        _unlink(os.path.join(directory, entry))
        log('info', f'removed {entry}, left by an interrupted write of the sessions file')


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class SessionWriter:
    """Writes the store to the sessions file on its own thread after each change."""

    def __init__(self, store: SessionStore, log: Log) -> None:
        self.store = store
        self.log = log
        self.path = ''
        self._wanted = 0        # changes requested
        self._written = 0       # changes covered by the last finished write
        self._condition = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._failing = False

    def use(self, path: str) -> Dict[str, Any]:
        """Use this file ('' : none): check its directory (SessionFileError), load its
        sessions into the store; returns what was loaded (sessions, turns)."""
        self.flush()
        with self._condition:
            self.path = path
        if not path:
            return {'sessions': 0, 'turns': 0}
        check_writable(path)
        sessions = load(path, self.log)
        self.store.replace_all(sessions)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name='sessions file',
                                            daemon=True)
            self._thread.start()
        kept = self.store.snapshot()
        return {'sessions': len(kept), 'turns': sum(s.turn_count for _, s in kept)}

    def close(self) -> None:
        """Write what is pending, then write no more (cleanup: the file keeps the sessions
        while the store is cleared)."""
        self.use('')

    def changed(self) -> None:
        """The store changed: write it soon (returns at once)."""
        with self._condition:
            if not self.path:
                return
            self._wanted += 1
            self._condition.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every change so far is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._condition:
            wanted = self._wanted
            while self._written < wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._condition.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._written >= self._wanted:
                    self._condition.wait()
                wanted, path = self._wanted, self.path
            try:
                if path:
                    save(path, self.store.snapshot())
                if self._failing:
                    self.log('info', f'sessions file {path} written again')
                self._failing = False
            except Exception as error:  # the disk, or a defect: the thread must go on
                if not self._failing:   # said once, not once per turn
                    self.log('error', f'sessions file {path} could not be written: {error}; '
                                      'sessions are kept in memory')
                self._failing = True
            with self._condition:
                self._written = wanted
                self._condition.notify_all()
