"""Conversations kept by the node: per session_id a system prompt and the last turns.

A turn is the messages of one chat goal: its tool results (role `tool`, answering the previous
turn's tool calls) and user message, then the assistant's answer or tool calls. It is stored
only when the chat completed; a canceled or failed chat leaves the session as it was, so a
retry sees the same history. Trimming drops whole turns, oldest first, with the turns that
answer their tool calls, but never the newest turn (the next goal's tool results answer its
calls): when a chain of tool calls outgrows the turn limit, the newest turn's own results may
remain without the turn that called them.
"""

import collections
import dataclasses
import threading
from typing import Any, Dict, List, Optional, Sequence

Message = Dict[str, Any]
# A rough characters-per-token ratio for English text, to keep a session within the context.
CHARS_PER_TOKEN = 4


@dataclasses.dataclass
class Session:
    system_prompt: str = ''
    turns: List[List[Message]] = dataclasses.field(default_factory=list)  # one per goal
    # The last turn's tool calls, id -> tool name: what the next goal's tool_results answer.
    pending_calls: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def turn_count(self) -> int:
        return len(self.turns)


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
                 context_tokens: int = 0,
                 tool_results: Sequence[Message] = ()) -> List[Message]:
        """The messages to send for this turn: system, kept turns (trimmed), then this turn's
        tool results and prompt (see request_messages)."""
        with self._lock:
            session = self._sessions.get(session_id) if session_id else None
            system = system_prompt or (session.system_prompt if session else '')
            # A caller's context is sent without its reasoning, like a session's turns.
            history = [{'role': m['role'], 'content': m['content']} for m in context or []]
            turns = list(session.turns) if session else [   # trimmed two messages at a time
                history[index:index + 2] for index in range(0, len(history), 2)]
        messages: List[Message] = [{'role': 'system', 'content': system}] if system else []
        current = request_messages(prompt, tool_results)
        if context_tokens > 0:
            budget = context_tokens * CHARS_PER_TOKEN - _chars(messages + current)
            while turns and sum(_chars(turn) for turn in turns) > budget:
                if tool_results and len(turns) == 1:
                    break   # the turn whose tool calls these results answer stays
                _drop_oldest(turns, keep_newest=bool(tool_results))
        return messages + [m for turn in turns for m in turn] + current

    def commit(self, session_id: str, system_prompt: str, prompt: str, answer: str,
               tool_results: Sequence[Message] = (),
               tool_calls: Sequence[Message] = (),
               call_ids: Sequence[str] = ()) -> int:
        """Store a completed turn; returns the session's number of turns.

        The turn is the goal's tool results and prompt, then the assistant's answer with the
        tool calls it made (Ollama's `tool_calls` form, with their ids in call_ids), so that
        the next turn can answer them.
        The model's reasoning is not kept: it is not sent back to the model on later turns
        (it would fill the context), which is what reasoning models expect.
        """
        assistant: Message = {'role': 'assistant', 'content': answer}
        if tool_calls:
            assistant['tool_calls'] = [dict(call) for call in tool_calls]
        with self._lock:
            session = self._sessions.pop(session_id, None) or Session()
            if system_prompt:
                session.system_prompt = system_prompt
            session.turns.append(request_messages(prompt, tool_results) + [assistant])
            session.pending_calls = {
                call_id: call['function']['name'] for call_id, call in zip(call_ids, tool_calls)}
            while len(session.turns) > self.max_turns:
                _drop_oldest(session.turns, keep_newest=True)
            self._sessions[session_id] = session  # most recently used last
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return session.turn_count

    def pending_calls(self, session_id: str) -> Dict[str, str]:
        """The tool calls of the session's last turn (id -> name); empty when none."""
        with self._lock:
            session = self._sessions.get(session_id)
            return dict(session.pending_calls) if session else {}

    def turn_count(self, session_id: str) -> int:
        with self._lock:
            session = self._sessions.get(session_id)
            return session.turn_count if session else 0


def request_messages(prompt: str, tool_results: Sequence[Message] = ()) -> List[Message]:
    """A goal's own messages: its tool results (role `tool`), then its prompt if any."""
    messages = [{'role': 'tool', 'content': r['content'], 'tool_name': r['name']}
                for r in tool_results]
    return messages + ([{'role': 'user', 'content': prompt}] if prompt else [])


def _drop_oldest(turns: List[List[Message]], keep_newest: bool) -> None:
    """Drop the oldest turn, and the turns after it that answer its tool calls; with
    keep_newest, never the newest turn (the next goal's tool results answer its calls; its own
    results then stay without the call they answered, which is better than losing the turn)."""
    del turns[0]
    floor = 1 if keep_newest else 0
    while len(turns) > floor and turns[0] and turns[0][0]['role'] == 'tool':
        del turns[0]


def _chars(messages: List[Message]) -> int:
    return sum(len(m.get('content', '')) for m in messages)
