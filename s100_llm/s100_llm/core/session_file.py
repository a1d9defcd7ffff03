"""The sessions file: the node's conversations on disk, so that they survive a restart.

Format (JSON, FORMAT_VERSION): {"version": 1, "sessions": [{"session_id", "system_prompt",
"base_tokens", "updated", "turns": [{"messages": [...], "call_ids": [...], "tokens"}]}]},
least recently used first; messages as they are sent to Ollama.

Writes are atomic: the whole file goes to a temporary file in the same directory (flushed and
fsynced), which then replaces the file (os.replace) and the directory is fsynced; a kill -9 at
any point leaves the old file or the new one, never a torn one. A temporary file left by such
a kill is removed at the next load. A file that cannot be parsed, does not hold this format or
holds values a ROS message cannot carry (NaN or infinite numbers, counts beyond uint32, times
beyond builtin_interfaces/Time, text that is not valid Unicode) is moved aside
(<file>.corrupt-<UTC time>) and the node starts with no sessions: the node wrote every value
itself, so a bad one means the file was damaged or edited, and the whole file is kept for
inspection rather than loaded in part.

What the node refuses (SessionFileError: configure fails with the reason, nothing is renamed or
replaced): a path that is not a regular file (a device such as /dev/null, a FIFO, a directory,
a socket), a file it cannot read, a file over MAX_FILE_BYTES, a path on a kernel file system
(/proc, /sys), and a file another node uses: a node holds an flock on <file>.lock while it
uses the file (from configure to cleanup, shutdown or its exit; the kernel releases it when
the process dies, however it dies). A symbolic link is followed: the node reads and replaces
the file it points to, so the link stays (a link lets a read-only system keep its sessions on
a writable disk). The file is opened without following a link and without blocking (a FIFO put
there after the check) and checked again after opening (fstat).

SessionWriter writes on a thread of its own after each change of the store (a stored turn, a
reset): the store's lock is held only to copy the sessions, never during I/O, and the chat
that changed the store never waits for the disk. Changes made while a write runs are written
by the next one.
"""

import datetime
import errno
import fcntl
import json
import math
import os
import stat
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import psutil

from .sessions import Session
from .sessions import SessionStore
from .sessions import Turn

FORMAT_VERSION = 1
TEMP_MARK = '.tmp-'
LOCK_SUFFIX = '.lock'
# The largest file read (and written): a bound on the memory and time a load takes, far above
# what the default bounds fill (64 sessions of 20 turns, each history within a model's context:
# 8 MB with 32k-token contexts).
MAX_FILE_BYTES = 64 * 1024 * 1024
# What a ROS message can carry: counts are uint32, builtin_interfaces/Time's sec an int32.
UINT32_MAX = 2 ** 32 - 1
INT32_MAX = 2 ** 31 - 1
# Kernel file systems: their directories hold no files a process can create.
KERNEL_FILE_SYSTEMS = frozenset({
    'proc', 'sysfs', 'cgroup', 'cgroup2', 'debugfs', 'tracefs', 'securityfs', 'pstore', 'bpf',
    'configfs', 'efivarfs', 'fusectl', 'binfmt_misc', 'mqueue', 'devpts', 'hugetlbfs'})
Log = Callable[[str, str], None]   # (level, line)


class SessionFileError(Exception):
    """The sessions file cannot be used: configure fails with this reason."""


def expand(path: str) -> str:
    """The sessions_file parameter as an absolute path ('' stays '': no file)."""
    return os.path.abspath(os.path.expanduser(path)) if path else ''


def resolve(path: str) -> str:
    """The file the node reads and replaces for this absolute path: symbolic links followed
    (a dangling link: the file it names, created at the first write)."""
    real = os.path.realpath(path)
    if os.path.islink(real):    # realpath stops at a loop
        raise SessionFileError(f'sessions_file {path} is a symbolic link that does not '
                               'resolve (a loop)')
    return real


def check_path(path: str) -> None:
    """SessionFileError when the path is on a kernel file system or exists and is not a
    regular file of at most MAX_FILE_BYTES (nothing is opened)."""
    mount = _file_system(os.path.dirname(path))
    if mount is not None and mount.fstype in KERNEL_FILE_SYSTEMS:
        raise SessionFileError(
            f'sessions_file {path} is on {mount.mountpoint}, a kernel file system '
            f'({mount.fstype}) that holds no files: point it at a directory on a disk')
    try:
        status = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):   # created at the first write
        return
    except OSError as error:
        raise SessionFileError(f'sessions_file {path} cannot be examined: '
                               f'{error.strerror}') from None
    _check_status(path, status)


def _check_status(path: str, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise SessionFileError(
            f'sessions_file {path} is {_kind(status.st_mode)}, not a regular file: the node '
            'reads and replaces only a regular file (an empty sessions_file keeps sessions in '
            'memory only)')
    if status.st_size > MAX_FILE_BYTES:
        raise SessionFileError(
            f'sessions_file {path} holds {status.st_size} bytes, more than the '
            f'{MAX_FILE_BYTES} a sessions file may hold: move it away or point sessions_file '
            'elsewhere')


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, 'a directory'), (stat.S_ISCHR, 'a character device'),
             (stat.S_ISBLK, 'a block device'), (stat.S_ISFIFO, 'a FIFO'),
             (stat.S_ISSOCK, 'a socket'), (stat.S_ISLNK, 'a symbolic link'))
    return next((name for test, name in kinds if test(mode)), 'not a file')


def _file_system(directory: str) -> Optional[Any]:
    """The mount (psutil's partition: mountpoint, fstype) holding directory or, when it does
    not exist yet, its nearest existing parent; None when not known."""
    while not os.path.exists(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    try:
        mounts = psutil.disk_partitions(all=True)
    except (OSError, psutil.Error):
        return None
    inside = [m for m in mounts
              if directory == m.mountpoint
              or directory.startswith(m.mountpoint.rstrip('/') + '/')]
    return max(inside, key=lambda m: len(m.mountpoint), default=None)


def check_writable(path: str) -> None:
    """Create the file's directory if needed; SessionFileError when it cannot be written."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise SessionFileError(f'sessions_file {path}: cannot create its directory: '
                               f'{error.strerror}') from None
    try:    # a real write: os.access() says yes to root on a read-only file system
        descriptor, probe = tempfile.mkstemp(prefix=os.path.basename(path) + TEMP_MARK,
                                             dir=directory)
    except OSError as error:
        raise SessionFileError(f'sessions_file {path}: its directory {directory} is not '
                               f'writable: {error.strerror}') from None
    os.close(descriptor)
    _unlink(probe)


def lock(path: str) -> int:
    """Take the flock on <path>.lock (the descriptor: close it to release); SessionFileError
    when another process holds it. The file names the holder's pid, for that reason."""
    lock_path = path + LOCK_SUFFIX
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise SessionFileError(f'sessions_file {path}: cannot open its lock file {lock_path}: '
                               f'{error.strerror}') from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise SessionFileError(f'sessions_file {path}: its lock file {lock_path} is not a '
                                   'regular file')
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors='replace').strip() or 'unknown'
            raise SessionFileError(
                f'sessions_file {path} is in use by another node (process {holder} holds '
                f'{lock_path}): each node needs a sessions file of its own') from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f'{os.getpid()}\n'.encode())
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def load(path: str, log: Log) -> List[Tuple[str, Session]]:
    """The sessions in the file (least recently used first); [] when there is none. A file
    whose content cannot be used is moved aside with a WARN naming the cause; temporary files
    left by an interrupted write are removed. SessionFileError when the file cannot be read,
    is not a regular file or is too large (nothing is moved then)."""
    _remove_temporary_files(path, log)
    raw = read(path)
    if raw is None:
        return []
    try:
        return parse(raw)
    except ValueError as error:
        _move_aside(path, str(error), log)
        return []


def read(path: str) -> Optional[bytes]:
    """The file's bytes (None: no file), at most MAX_FILE_BYTES; SessionFileError otherwise.
    O_NONBLOCK: a FIFO put there since it was checked is opened without waiting for a writer
    (and then refused); O_NOFOLLOW: so is a symbolic link."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        cause = ('it is a symbolic link' if error.errno == errno.ELOOP else error.strerror)
        raise SessionFileError(f'sessions_file {path} cannot be read: {cause}') from None
    with os.fdopen(descriptor, 'rb') as stream:
        _check_status(path, os.fstat(descriptor))
        try:
            raw = stream.read(MAX_FILE_BYTES + 1)
        except OSError as error:
            raise SessionFileError(f'sessions_file {path} cannot be read: '
                                   f'{error.strerror}') from None
    if len(raw) > MAX_FILE_BYTES:   # it grew since fstat
        raise SessionFileError(f'sessions_file {path} holds more than the {MAX_FILE_BYTES} '
                               'bytes a sessions file may hold')
    return raw


def parse(raw: bytes) -> List[Tuple[str, Session]]:
    """The sessions in a file's bytes; ValueError naming what is wrong."""
    try:
        document = json.loads(raw, parse_constant=_not_a_number, parse_float=_finite)
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


def _not_a_number(name: str) -> Any:
    raise ValueError(f'{name} is not a JSON number')


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):    # 1e999
        raise ValueError(f'{text} is out of range')
    return value


def _text(value: Any) -> bool:
    r"""A str a ROS message can carry: UTF-8 encodable (JSON's "\ud800" makes a lone surrogate,
    which is not)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _count(value: Any) -> bool:
    """An integer a uint32 field can carry."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT32_MAX


def _session(entry: Any) -> Tuple[str, Session]:
    _expect(isinstance(entry, dict), 'a session must be an object')
    session_id = entry.get('session_id')
    _expect(_text(session_id) and session_id, 'a session_id must be non-empty text')
    where = f'session {session_id!r}'
    _expect(_text(entry.get('system_prompt')), f'{where}: system_prompt must be text')
    _expect(_count(entry.get('base_tokens')),
            f'{where}: base_tokens must be an integer from 0 to {UINT32_MAX}')
    updated = entry.get('updated')
    _expect(isinstance(updated, (int, float)) and not isinstance(updated, bool)
            and 0 <= updated <= INT32_MAX,
            f'{where}: updated must be a time in seconds from 0 to {INT32_MAX}')
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
                and _text(message.get('content')),
                f'{where}: a message needs a role (user, assistant, tool) and text content')
        _expect(_text(message.get('tool_name', '')), f'{where}: tool_name must be text')
        calls = message.get('tool_calls', [])
        _expect(isinstance(calls, list) and all(
            isinstance(call, dict) and isinstance(call.get('function'), dict)
            and _text(call['function'].get('name'))
            and isinstance(call['function'].get('arguments', {}), dict) for call in calls),
            f'{where}: tool_calls must be Ollama function calls')
    call_ids = entry.get('call_ids')
    _expect(isinstance(call_ids, list) and all(_text(i) for i in call_ids),
            f'{where}: call_ids must be a list of text')
    tokens = entry.get('tokens')
    _expect(_count(tokens), f'{where}: tokens must be an integer from 0 to {UINT32_MAX}')
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
    """Replace the file with these sessions, atomically (OSError when it fails, ValueError
    when they take more than MAX_FILE_BYTES: the next load would refuse the file)."""
    data = serialize(sessions)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f'the sessions take {len(data)} bytes, more than the '
                         f'{MAX_FILE_BYTES} a sessions file may hold')
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
        self._lock: Optional[int] = None     # the descriptor holding the flock of the file used

    def use(self, path: str) -> Dict[str, Any]:
        """Use this file ('' : none; a symbolic link: the file it points to): check it, lock
        it and load its sessions into the store (SessionFileError: not used, the store left
        as it was); returns what was loaded (path: the file, sessions, turns). The file used
        so far is written and released first."""
        self.flush()
        with self._condition:
            self.path = ''
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if not path:
            return {'path': '', 'sessions': 0, 'turns': 0}
        real = resolve(path)
        check_path(real)
        check_writable(real)
        held = lock(real)
        try:
            sessions = load(real, self.log)
        except BaseException:
            os.close(held)
            raise
        self._lock = held
        self.store.replace_all(sessions)
        with self._condition:
            self.path = real
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name='sessions file',
                                            daemon=True)
            self._thread.start()
        kept = self.store.snapshot()
        return {'path': real, 'sessions': len(kept), 'turns': sum(s.turn_count for _, s in kept)}

    def close(self) -> None:
        """Write what is pending, then write no more and release the file (cleanup,
        shutdown: the file keeps the sessions while the store is cleared)."""
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
