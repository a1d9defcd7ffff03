"""Conversations kept by the node: per session_id a system prompt and the last turns.

A turn (user message + assistant answer) is stored only when the chat completed; a canceled
or failed chat leaves the session as it was, so a retry sees the same history.
"""

import collections
import dataclasses
import threading
from typing import Dict, List, Optional

Message = Dict[str, str]
# A rough characters-per-token ratio for English text, to keep a session within the context.
CHARS_PER_TOKEN = 4


@dataclasses.dataclass
class Session:
    system_prompt: str = ''
    turns: List[Message] = dataclasses.field(default_factory=list)  # user/assistant pairs

    @property
    def turn_count(self) -> int:
        return len(self.turns) // 2


class SessionStore:
    def __init__(self, max_turns: int, max_sessions: int) -> None:
        self.max_turns = max_turns
        self.max_sessions = max_sessions
        self._sessions: 'collections.OrderedDict[str, Session]' = collections.OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def reset(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def messages(self, session_id: str, system_prompt: str, prompt: str,
                 context: Optional[List[Message]] = None,
                 context_tokens: int = 0) -> List[Message]:
        """The messages to send for this turn: system, kept turns (trimmed), then the prompt."""
        with self._lock:
            session = self._sessions.get(session_id) if session_id else None
            system = system_prompt or (session.system_prompt if session else '')
            # A caller's context is sent without its reasoning, like a session's turns.
            history = list(session.turns) if session else [
                {'role': m['role'], 'content': m['content']} for m in context or []]
        messages: List[Message] = [{'role': 'system', 'content': system}] if system else []
        user = {'role': 'user', 'content': prompt}
        if context_tokens > 0:
            budget = context_tokens * CHARS_PER_TOKEN - _chars(messages + [user])
            while history and _chars(history) > budget:
                del history[:2]   # the oldest turn
        return messages + history + [user]

    def commit(self, session_id: str, system_prompt: str, prompt: str, answer: str) -> int:
        """Store a completed turn; returns the session's number of turns.

        The model's reasoning is not kept: it is not sent back to the model on later turns
        (it would fill the context), which is what reasoning models expect.
        """
        with self._lock:
            session = self._sessions.pop(session_id, None) or Session()
            if system_prompt:
                session.system_prompt = system_prompt
            session.turns += [{'role': 'user', 'content': prompt},
                              {'role': 'assistant', 'content': answer}]
            del session.turns[:max(0, len(session.turns) - 2 * self.max_turns)]
            self._sessions[session_id] = session  # most recently used last
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return session.turn_count

    def turn_count(self, session_id: str) -> int:
        with self._lock:
            session = self._sessions.get(session_id)
            return session.turn_count if session else 0


def _chars(messages: List[Message]) -> int:
    return sum(len(m.get('content', '')) for m in messages)
