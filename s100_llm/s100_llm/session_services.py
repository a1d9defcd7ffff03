"""The session services: `~/list_sessions` and `~/get_session`, for a behaviour or a UI that
shows the conversations the node keeps.

Both are guarded (guard.py): a defect or a value their messages cannot carry is logged at ERROR
and answered with an empty response (they have no error field), never ends the node.

They answer in every lifecycle state from what the session store holds: nothing before the
first configure, the sessions file's conversations from configure on (kept while inactive;
cleanup forgets them in memory, the next configure loads the file again). Each call copies
the store under its lock and builds the answer outside it.
"""

import json
from typing import Sequence

from builtin_interfaces.msg import Time
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from s100_llm_msgs.msg import ChatMessage
from s100_llm_msgs.msg import SessionInfo
from s100_llm_msgs.msg import ToolCall
from s100_llm_msgs.srv import GetSession
from s100_llm_msgs.srv import ListSessions

from . import guard
from .core.session_file import UINT32_MAX
from .core.sessions import Message
from .core.sessions import Session
from .core.sessions import SessionStore
from .qos import SERVICE_QOS


class SessionServices:
    """Serves ListSessions and GetSession from a SessionStore."""

    def __init__(self, node: Node, store: SessionStore) -> None:
        self.store = store
        # A group of their own: a long answer never waits for (or delays) chats or transitions.
        group = MutuallyExclusiveCallbackGroup()
        node.create_service(ListSessions, '~/list_sessions',
                            guard.service(node, '~/list_sessions', self._list, check_answer=True),
                            qos_profile=SERVICE_QOS, callback_group=group)
        node.create_service(GetSession, '~/get_session',
                            guard.service(node, '~/get_session', self._get, check_answer=True),
                            qos_profile=SERVICE_QOS, callback_group=group)

    def _list(self, request: ListSessions.Request,
              response: ListSessions.Response) -> ListSessions.Response:
        response.sessions = [info(session_id, session)
                             for session_id, session in self.store.snapshot()]
        return response

    def _get(self, request: GetSession.Request,
             response: GetSession.Response) -> GetSession.Response:
        session = self.store.get(request.session_id)
        if session is None:
            response.found = False
            return response
        response.found = True
        response.info = info(request.session_id, session)
        response.system_prompt = session.system_prompt
        response.messages = [chat_message(message, turn.call_ids)
                             for turn in session.turns for message in turn.messages]
        return response


def info(session_id: str, session: Session) -> SessionInfo:
    seconds = int(session.updated)
    return SessionInfo(
        session_id=session_id, turns=session.turn_count,
        messages=sum(len(turn.messages) for turn in session.turns),
        # A sum of uint32 counts: the field holds the most it can.
        context_tokens=min(session.context_tokens, UINT32_MAX),
        updated=Time(sec=seconds, nanosec=int((session.updated - seconds) * 1e9)))


def chat_message(message: Message, call_ids: Sequence[str]) -> ChatMessage:
    """A stored message as ChatMessage: tool calls (with the ids the node gave them, its
    turn's call_ids) in tool_calls, a tool result's tool in tool_name."""
    calls = message.get('tool_calls') or []
    ids = list(call_ids) + [''] * (len(calls) - len(call_ids))
    return ChatMessage(
        role=message['role'], content=message.get('content', ''),
        tool_name=message.get('tool_name', ''),
        tool_calls=[ToolCall(id=call_id, name=call['function']['name'],
                             arguments_json=json.dumps(call['function'].get('arguments', {})))
                    for call_id, call in zip(ids, calls)])
