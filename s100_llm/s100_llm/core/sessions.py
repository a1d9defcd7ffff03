"""Conversations kept by the node: per session_id a system prompt and the last turns.

A turn is the messages of one chat goal: its tool results (role `tool`, answering the previous
turn's tool calls) and user message, then the assistant's answer or tool calls. It is stored
only when the chat completed; a canceled or failed chat leaves the session as it was, so a
retry sees the same history.

Prefix-stable history: what is sent for a session is its system prompt and its stored turns,
byte for byte as they were sent before, then the new turn. Ollama (llama.cpp) keeps the
previous request's evaluated prompt and reuses the longest common prefix, so a session whose
history only grows at the end costs only its new tokens. Trimming breaks that prefix, so it
drops a block of turns at once, rarely: when a session exceeds `max_turns` it keeps its newest
`max_turns // 2` turns; when its history no longer fits the context budget (the model's
context minus room for the answer) it drops the oldest turns until the history and the new
turn take at most half of the budget. Trimming drops whole turns, oldest first, with the turns
that answer their tool calls, but never the newest turn (the next goal's tool results answer
its calls): when a chain of tool calls outgrows the limit, the newest turn's own results may
remain without the turn that called them.

Token counts (`Turn.tokens`, `Session.base_tokens`) come from the model's own counts where
Ollama reports them. After a turn, the prompt's tokens are prompt_eval_count (the tokens
Ollama evaluated) plus the tokens it reused from its cache, which it does not report; the
answer's are eval_count. Ollama reuses the longest common prefix with the prompt it evaluated
last on that slot, and a session's prompt can share with it: nothing (another conversation was
there), the system prompt (another session with the same one, or this session after a trim),
some of its turns, or its whole history (this session's previous turn: the usual case). These
prefixes end at known token counts (system prompt, then each kept turn); the node takes the
one that best explains the count (prompt_eval_count closest to history - prefix + an estimate
of the new messages) as reused, and the new turn counts prompt_eval_count + reused - history
(its own messages) + eval_count. The error is bounded by the estimate's error on the new
messages, and does not add up over turns. Where no count is known (the system prompt before a
first turn, a server that reports none, a turn with images: its count includes the images'
tokens, its stored note does not), CHARS_PER_TOKEN characters per token plus
MESSAGE_TOKENS per message are assumed; a first turn that evaluated everything splits its
count between the system prompt and the question by their estimates.
"""

import collections
import dataclasses
import math
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

Message = Dict[str, Any]
# A rough characters-per-token ratio for English text: the estimate where no count is known.
CHARS_PER_TOKEN = 4
# What the chat template adds per message (role header and end of turn: 3-5 tokens for ChatML).
MESSAGE_TOKENS = 4
# The share of the model's context kept free for the answer when a goal asks for more (or for
# up to max_tokens_limit): the history is trimmed to the rest.
ANSWER_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class Turn:
    """One stored turn: its messages as they are sent, the ids of the tool calls its
    assistant message made (in order; never sent, Ollama's client drops them) and the tokens
    it takes in the model's context (0: not known)."""

    messages: Tuple[Message, ...]
    call_ids: Tuple[str, ...] = ()
    tokens: int = 0


@dataclasses.dataclass
class Session:
    """One conversation: its system prompt and kept turns, as they are sent."""

    system_prompt: str = ''
    turns: List[Turn] = dataclasses.field(default_factory=list)  # one per goal, oldest first
    # Tokens of the system prompt in the model's context (0: not known).
    base_tokens: int = 0
    updated: float = 0.0        # wall-clock time (s) the last turn was stored

    @property
    def turn_count(self) -> int:
        return len(self.turns)

    @property
    def pending_calls(self) -> Dict[str, str]:
        """The last turn's tool calls, id -> tool name: what the next goal's tool_results
        answer."""
        if not self.turns:
            return {}
        last = self.turns[-1]
        calls = last.messages[-1].get('tool_calls') or []
        return {call_id: call['function']['name'] for call_id, call in zip(last.call_ids, calls)}

    @property
    def context_tokens(self) -> int:
        """Tokens of the history by the model's counts (0 before the first turn's counts)."""
        if not any(turn.tokens for turn in self.turns):
            return 0
        return self.base_tokens + sum(turn.tokens or estimate(turn.messages)
                                      for turn in self.turns)


@dataclasses.dataclass
class Prompt:
    """What one goal sends (messages) and what its commit needs to know about it."""

    messages: List[Message]
    # The stored turns left out to fit the context (dropped from the session at commit), and
    # the first turn kept (None: none), to recognise the session at commit.
    dropped: int = 0
    first_kept: Optional[Turn] = None
    # Tokens before each turn's messages and after the last (counts, or estimates): where a
    # prefix that Ollama reused may end. The last is the whole history's.
    boundaries: Tuple[int, ...] = (0,)
    request: List[Message] = dataclasses.field(default_factory=list)  # this goal's messages


def estimate(messages: Sequence[Message]) -> int:
    """Tokens of messages by the characters-per-token estimate."""
    return sum(len(m.get('content', '')) // CHARS_PER_TOKEN + MESSAGE_TOKENS for m in messages)


def context_budget(context_length: int, answer_tokens: int) -> int:
    """Tokens the prompt may take: the model's context minus room for the answer (the goal's
    answer limit, at most ANSWER_SHARE of the context). 0: no limit known."""
    if context_length <= 0:
        return 0
    return context_length - min(answer_tokens, int(context_length * ANSWER_SHARE))


class SessionStore:
    """The sessions by id, least recently used first, bounded by max_sessions x max_turns.

    on_change (optional) is called, without the store's lock, after every change that a
    sessions file should keep (a stored turn, a reset, an eviction).
    """

    def __init__(self, max_turns: int, max_sessions: int,
                 on_change: Optional[Callable[[], None]] = None) -> None:
        self.max_turns = max_turns
        self.max_sessions = max_sessions
        self.on_change = on_change
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
            removed = self._sessions.pop(session_id, None)
        if removed is not None:
            self._changed()

    def clear(self) -> None:
        """Forget every session (in memory only: a sessions file keeps them)."""
        with self._lock:
            self._sessions.clear()

    def replace_all(self, sessions: Sequence[Tuple[str, Session]]) -> None:
        """Take these sessions (least recently used first), trimmed to the store's bounds."""
        with self._lock:
            self._sessions.clear()
            for session_id, session in sessions:
                _trim_to_turn_limit(session.turns, self.max_turns)
                self._sessions[session_id] = session
            self._evict()

    def snapshot(self) -> List[Tuple[str, Session]]:
        """A copy of every session, least recently used first (turns are immutable)."""
        with self._lock:
            return [(session_id, dataclasses.replace(session, turns=list(session.turns)))
                    for session_id, session in self._sessions.items()]

    def get(self, session_id: str) -> Optional[Session]:
        """A copy of one session, or None."""
        with self._lock:
            session = self._sessions.get(session_id)
            return None if session is None else dataclasses.replace(
                session, turns=list(session.turns))

    def prompt(self, session_id: str, system_prompt: str, prompt: str,
               context: Optional[List[Message]] = None, budget_tokens: int = 0,
               tool_results: Sequence[Message] = ()) -> Prompt:
        """What to send for this turn: system, kept turns, then this turn's tool results and
        prompt (see request_messages). A session's turns are sent as stored; when they do not
        fit budget_tokens (0: no limit) the oldest are left out in a block (see the module's
        docstring). A caller's context (single-turn goals) is trimmed two messages at a time."""
        current = request_messages(prompt, tool_results)
        with self._lock:
            session = self._sessions.get(session_id) if session_id else None
            if session is None:
                return self._single_turn(system_prompt, context or [], current, budget_tokens)
            turns = list(session.turns)
            system = system_prompt or session.system_prompt
            base = (session.base_tokens if system == session.system_prompt
                    and session.base_tokens else _system_estimate(system))
        keep_newest = bool(tool_results)
        needed = base + _turn_tokens(turns) + estimate(current)
        dropped = 0
        if budget_tokens and needed > budget_tokens:
            while turns and base + _turn_tokens(turns) + estimate(current) > budget_tokens / 2:
                if keep_newest and len(turns) == 1:
                    break   # the turn whose tool calls these results answer stays
                before = len(turns)
                _drop_oldest(turns, keep_newest)
                dropped += before - len(turns)
        system_messages = [{'role': 'system', 'content': system}] if system else []
        return Prompt(system_messages + [m for turn in turns for m in turn.messages] + current,
                      dropped, turns[0] if turns else None, _boundaries(base, turns), current)

    @staticmethod
    def _single_turn(system: str, context: List[Message], current: List[Message],
                     budget_tokens: int) -> Prompt:
        messages: List[Message] = [{'role': 'system', 'content': system}] if system else []
        # A caller's context is sent without its reasoning, like a session's turns.
        history = [{'role': m['role'], 'content': m['content']} for m in context]
        pairs = [history[index:index + 2] for index in range(0, len(history), 2)]
        if budget_tokens:
            room = budget_tokens - estimate(messages + current)
            while pairs and sum(estimate(pair) for pair in pairs) > room:
                del pairs[0]
        return Prompt(messages + [m for pair in pairs for m in pair] + current,
                      boundaries=_boundaries(_system_estimate(system), []), request=current)

    def commit(self, session_id: str, system_prompt: str, sent: Prompt, answer: str,
               tool_calls: Sequence[Message] = (), call_ids: Sequence[str] = (),
               prompt_eval_count: int = 0, eval_count: int = 0) -> int:
        """Store a completed turn; returns the session's number of turns.

        The turn is the goal's tool results and prompt (sent.request), then the assistant's
        answer with the tool calls it made (Ollama's `tool_calls` form, with their ids in
        call_ids), so that the next turn can answer them. The turns sent.dropped are dropped
        (when the session still starts as it did when they were left out), then the oldest
        turns in a block when the session exceeds max_turns. prompt_eval_count and eval_count
        are Ollama's counts for this turn (0: not reported).
        The model's reasoning is not kept: it is not sent back to the model on later turns
        (it would fill the context), which is what reasoning models expect.
        """
        assistant: Message = {'role': 'assistant', 'content': answer}
        if tool_calls:
            assistant['tool_calls'] = [dict(call) for call in tool_calls]
        with self._lock:
            session = self._sessions.pop(session_id, None) or Session()
            if system_prompt and system_prompt != session.system_prompt:
                session.system_prompt = system_prompt
                session.base_tokens = 0
            if sent.dropped and sent.first_kept is not None:
                index = next((i for i, turn in enumerate(session.turns)
                              if turn is sent.first_kept), 0)
                del session.turns[:index]
            elif sent.dropped:
                session.turns.clear()
            tokens = _new_turn_tokens(session, sent, prompt_eval_count, eval_count)
            session.turns.append(Turn(tuple(sent.request) + (assistant,), tuple(call_ids),
                                      tokens))
            _trim_to_turn_limit(session.turns, self.max_turns)
            session.updated = time.time()
            self._sessions[session_id] = session  # most recently used last
            self._evict()
            count = session.turn_count
        self._changed()
        return count

    def trim_ahead(self, session_id: str, sent: Prompt, budget_tokens: int
                   ) -> Optional[List[Message]]:
        """After a turn is stored: make the session's next prompt start with a history the
        model can have in its cache before that turn comes. Returns the messages to evaluate
        now (system prompt and kept turns) when the next prompt will not start with the one
        just evaluated (sent), else None.

        Two trims change the history's start: the turn limit, applied by commit(), and the
        context budget, applied by prompt() to the next turn. The latter is predicted with
        prompt()'s own rule, the kept history plus the next turn's messages against the
        budget, taking for the next turn's messages the largest request among the kept turns
        (by the estimate, at most its turn's count; a typical next prompt, counted high so
        that the next turn rarely trims after all),
        and budget_tokens as this turn's (the next goal usually asks for the same answer
        limit). When the next turn would trim, the turns it would leave out are dropped now.
        """
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or not session.turns:
                return None
            turns = session.turns
            base = session.base_tokens or _system_estimate(session.system_prompt)
            # The next goal's tool results answer this turn's calls: that turn stays.
            keep_newest = bool(session.pending_calls)
            # A request's tokens are at most its turn's by the model's count (when known).
            typical = max(min(estimate(turn.messages[:-1]), turn.tokens or math.inf)
                          for turn in turns)
            before = len(turns)
            if budget_tokens and base + _turn_tokens(turns) + typical > budget_tokens:
                while turns and base + _turn_tokens(turns) + typical > budget_tokens / 2:
                    if keep_newest and len(turns) == 1:
                        break
                    _drop_oldest(turns, keep_newest)
            trimmed = len(turns) < before
            # The prompt just evaluated started with sent.first_kept (None: with this turn).
            evaluated_first = sent.first_kept
            moved = evaluated_first is not None and (not turns or turns[0] is not evaluated_first)
            if not (trimmed or moved):
                return None
            system = ([{'role': 'system', 'content': session.system_prompt}]
                      if session.system_prompt else [])
            messages = system + [m for turn in turns for m in turn.messages]
        if trimmed:
            self._changed()
        return messages

    def pending_calls(self, session_id: str) -> Dict[str, str]:
        """The tool calls of the session's last turn (id -> name); empty when none."""
        with self._lock:
            session = self._sessions.get(session_id)
            return session.pending_calls if session else {}

    def turn_count(self, session_id: str) -> int:
        with self._lock:
            session = self._sessions.get(session_id)
            return session.turn_count if session else 0

    def _evict(self) -> None:
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _new_turn_tokens(session: Session, sent: Prompt, prompt_eval_count: int,
                     eval_count: int) -> int:
    """The tokens the new turn takes, from Ollama's counts (see the module's docstring); sets
    the system prompt's when only estimated so far. 0 when Ollama reported no counts."""
    if not prompt_eval_count:
        return 0
    new = estimate(sent.request)
    history = sent.boundaries[-1]
    # On a tie the longer prefix: the new turn is then counted high rather than low.
    reused = min(reversed(sent.boundaries),
                 key=lambda prefix: abs(prompt_eval_count - (history - prefix + new)))
    if session.system_prompt and not session.base_tokens:
        system = _system_estimate(session.system_prompt)
        if reused == 0 and history == system:
            # A first turn evaluated whole: split the count by the estimates.
            session.base_tokens = max(1, round(prompt_eval_count * system / (system + new)))
            return max(1, prompt_eval_count - session.base_tokens) + max(eval_count, 1)
        session.base_tokens = system
    return max(1, prompt_eval_count + reused - history) + max(eval_count, 1)


def _boundaries(base: int, turns: Sequence[Turn]) -> Tuple[int, ...]:
    """0, then the tokens up to the end of the system prompt and of each turn."""
    ends = [0, base]
    for turn in turns:
        ends.append(ends[-1] + (turn.tokens or estimate(turn.messages)))
    return tuple(ends)


def _system_estimate(system: str) -> int:
    return estimate([{'content': system}]) if system else 0


def _turn_tokens(turns: Sequence[Turn]) -> int:
    return sum(turn.tokens or estimate(turn.messages) for turn in turns)


def request_messages(prompt: str, tool_results: Sequence[Message] = ()) -> List[Message]:
    """A goal's own messages: its tool results (role `tool`), then its prompt if any."""
    messages = [{'role': 'tool', 'content': r['content'], 'tool_name': r['name']}
                for r in tool_results]
    return messages + ([{'role': 'user', 'content': prompt}] if prompt else [])


def _trim_to_turn_limit(turns: List[Turn], max_turns: int) -> None:
    """Beyond max_turns, drop the oldest turns in one block, down to max_turns // 2 (at least
    one): the history the model has cached changes once every max_turns // 2 turns or so,
    never on every turn."""
    if len(turns) <= max_turns:
        return
    keep = max(1, max_turns // 2)
    while len(turns) > keep:
        before = len(turns)
        _drop_oldest(turns, keep_newest=True)
        if len(turns) == before:
            break


def _drop_oldest(turns: List[Any], keep_newest: bool) -> None:
    """Drop the oldest turn, and the turns after it that answer its tool calls; with
    keep_newest, never the newest turn (the next goal's tool results answer its calls; its own
    results then stay without the call they answered, which is better than losing the turn)."""
    del turns[0]
    floor = 1 if keep_newest else 0
    while len(turns) > floor and turns[0].messages and turns[0].messages[0]['role'] == 'tool':
        del turns[0]
