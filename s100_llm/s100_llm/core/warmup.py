"""Warming Ollama's prompt cache in the background, so that no turn waits for a history the
model could have evaluated before the person spoke.

Ollama (llama.cpp) keeps the prompt it evaluated last on each slot and reuses the longest
common prefix with the next prompt. Two moments leave the next turn without that prefix:
- after a trim (core/sessions.py): the kept history no longer starts the cached prompt, and
  the next turn would evaluate all of it while the person waits. SessionStore.trim_ahead
  trims right after the answer (when the next turn would have to) and says what to evaluate;
  Warmer.start sends it while the robot speaks the answer.
- at activate: nothing is cached, and the model has never computed (its first evaluation also
  pays for the weights' pages and llama.cpp's buffers). warm_at_activate evaluates the system
  prompt the first turn will most likely start with.

A warm-up is a chat request of those messages with num_predict 1: it evaluates them and
generates one token. Not 0: Ollama's runner (0.2x) reads num_predict 0 as "no limit" and
would generate a whole answer; llama-server reads 0 as "evaluate only", so 1 is the request
that means the same on both generations, and one token costs one decode step.

A goal takes precedence (yield_to, called before the goal sends its request): a warm-up for
another conversation is canceled (closing its stream stops the evaluation at the end of
llama.cpp's current batch; it is of no use to that goal), one for the goal's own session is
waited for, because it evaluates the goal's own prefix: canceling it would throw away work the
goal then does again (measured in docs/performance.md). The warm-up at activate is waited for
by every goal: it is one system prompt, one batch. A warm-up never fails a goal: its errors
end it and nothing else, and it holds no admission slot (core/admission.py).

Threads: start, yield_to and cancel are called from the goals' threads and the node's
transitions; the warm-up's stream is pumped by the engine's loop and read only by a goal that
waits for it. `_lock` guards the warm-up in flight; nobody waits under it.
"""

import threading
from typing import Any, Callable, Dict, List, Optional

from .engine import ChatCanceled
from .engine import ChatStream
from .engine import EngineError
from .engine import OllamaEngine
from .sessions import Message
from .sessions import SessionStore

# Evaluate the prompt, generate one token (see the module's docstring for why not 0).
WARM_OPTIONS = {'num_predict': 1}


def activate_messages(sessions: SessionStore) -> List[Message]:
    """What to evaluate at activate: the system prompt the first turn most likely starts with.

    The node has no system prompt of its own (each goal or session brings one), so it takes
    the one of the session used last (a sessions file keeps it across restarts); without
    sessions a bare system message. Only the system prompt: it is short (one batch of
    llama.cpp's, which a cancel could not cut short anyway), so every first goal waits for it,
    and it starts most conversations of a robot. The first evaluation's cost is mostly the
    model's first computation, not the tokens (measured in docs/performance.md).
    """
    known = sessions.snapshot()
    return [{'role': 'system', 'content': known[-1][1].system_prompt if known else ''}]


class Warmer:
    """The one warm-up in flight (a newer one replaces it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: Optional[ChatStream] = None   # in flight, nobody waiting for it
        self._session_id: Optional[str] = None
        self._waited: Optional[ChatStream] = None   # in flight, a goal waiting for it

    def start(self, engine: OllamaEngine, model: str, messages: List[Message],
              keep_alive: float, idle_timeout: float, session_id: Optional[str] = None,
              tools: Optional[List[Dict[str, Any]]] = None) -> None:
        """Evaluate messages in the background for session_id's next goal (None: for every
        goal, which then waits for it). tools: those the next goal most likely sends (the
        chat template renders them into the prompt)."""
        if not messages:
            return
        stream = engine.chat(model, messages, None, dict(WARM_OPTIONS), keep_alive,
                             idle_timeout, tools=tools)
        with self._lock:
            previous, self._stream = self._stream, stream
            self._session_id = session_id
        if previous is not None:
            previous.cancel()

    def yield_to(self, session_id: str, canceled: Callable[[], bool]) -> None:
        """A goal (of session_id: '' for none) is about to send its request: cancel a warm-up
        for another session, wait for one for this session or for every goal to end.
        stop_waiting() ends the wait; canceled() (the goal's own flag, set before it calls
        stop_waiting) is checked once the wait is registered, so that a cancel between the
        two is not missed."""
        with self._lock:
            stream, self._stream = self._stream, None
            if stream is None:
                return
            mine = self._session_id is None or (bool(session_id)
                                                and self._session_id == session_id)
            if mine:
                self._waited = stream
        try:
            if not mine or canceled():
                stream.cancel()
                return
            for _ in stream:    # to its final chunk; silence is bounded by stream_timeout
                pass
        except (ChatCanceled, EngineError):
            pass    # the goal sends its own request either way
        finally:
            with self._lock:
                if self._waited is stream:
                    self._waited = None

    def stop_waiting(self) -> None:
        """End a goal's wait for a warm-up (the goal was canceled): the warm-up is canceled."""
        with self._lock:
            stream = self._waited
        if stream is not None:
            stream.cancel()

    def cancel(self) -> None:
        """Stop the warm-up in flight, and end a goal's wait for one (the node stops serving)."""
        with self._lock:
            streams = [self._stream, self._waited]
            self._stream = None
        for stream in streams:
            if stream is not None:
                stream.cancel()
