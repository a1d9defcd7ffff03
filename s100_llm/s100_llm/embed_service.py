"""The /<node>/embed service (s100_llm_msgs/srv/Embed): texts in, embedding vectors out.

Served with the node's embedding_model while the node is active (core.embedding decides, checks
and calls Ollama). Requests are answered one at a time, in a callback group of their own: a long
embed holds one executor thread and never blocks the lifecycle services, the parameters or the
chats. Every request that is not served is logged with its reason and error code.
"""

import array
import time
from typing import TYPE_CHECKING

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from s100_llm_msgs.msg import Embedding
from s100_llm_msgs.srv import Embed

from . import guard
from .core import embedding
from .core.config import EmbeddingSettings
from .core.embedding import EmbedErrorCode
from .qos import SERVICE_QOS

if TYPE_CHECKING:
    from .node import LlmNode
    from .parameters import NodeSettings


class EmbedService:
    """~/embed: one request at a time, each answered with vectors or an error code and why."""

    def __init__(self, node: 'LlmNode') -> None:
        self.node = node
        self.settings = EmbeddingSettings()
        # KEEP_ALL: requests from many clients wait in DDS while one is served, none dropped.
        # A defect (guard.py) is answered UNKNOWN with "internal error: <cause>".
        self._service = node.create_service(
            Embed, '~/embed', guard.service(node, '~/embed', self._on_request, _internal_error),
            qos_profile=SERVICE_QOS, callback_group=MutuallyExclusiveCallbackGroup())

    def configure(self, settings: 'NodeSettings') -> None:
        """Take the request limits (at configure and activate)."""
        self.settings = settings.embedding

    def _on_request(self, request: Embed.Request, response: Embed.Response) -> Embed.Response:
        started = time.monotonic()
        outcome = embedding.embed(self.node.serving_state, list(request.texts),
                                  request.truncate, request.dimensions, self.settings)
        code = outcome.error_code
        if code == EmbedErrorCode.SERVER_FAILED or code == EmbedErrorCode.UNKNOWN:
            self.node.get_logger().error(f'embed failed: {outcome.error_message} ({code.name})')
        elif code != EmbedErrorCode.NONE:
            self.node.get_logger().warning(
                f'embed request refused: {outcome.error_message} ({code.name})')
        else:
            self.node.get_logger().debug(
                f'embedded {len(outcome.vectors)} text(s) in '
                f'{time.monotonic() - started:.3f} s')
        # array('f') is what rosidl stores a float32[] as: no per-element conversion.
        response.embeddings = [Embedding(vector=array.array('f', vector))
                               for vector in outcome.vectors]
        response.model = outcome.model
        response.prompt_tokens = outcome.prompt_tokens
        response.error_code = int(code)
        response.error_message = outcome.error_message
        return response


def _internal_error(response: Embed.Response, cause: str) -> None:
    response.error_code = int(EmbedErrorCode.UNKNOWN)
    response.error_message = cause
