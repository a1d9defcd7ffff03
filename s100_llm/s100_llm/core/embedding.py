"""One embed request, ROS-free: whether it is served, its checks, the call and its outcome.

The ROS layer (embed_service.py) turns the service request into texts, truncate and dimensions,
calls `embed()` and turns the EmbedOutcome into the response. What goes wrong is an error code
(the numbers of s100_llm_msgs/srv/Embed.srv) with the reason in words.
"""

import dataclasses
import enum
from typing import Callable, List, Sequence

from .config import EmbeddingSettings
from .engine import EngineError
from .engine import RequestRefused
from .serving import ServingState


class EmbedErrorCode(enum.IntEnum):
    """Embed.srv's error codes (numbered like the chat action's)."""

    NONE = 0
    UNKNOWN = 1
    NOT_SERVING = 2
    INVALID_REQUEST = 3
    SERVER_FAILED = 7


@dataclasses.dataclass(frozen=True)
class EmbedOutcome:
    """The vectors (one per text, in order) or why there are none."""

    error_code: EmbedErrorCode
    error_message: str = ''
    vectors: List[List[float]] = dataclasses.field(default_factory=list)
    model: str = ''
    prompt_tokens: int = 0


def refusal(texts: Sequence[str], settings: EmbeddingSettings) -> str:
    """Why the texts are not a request the node takes ('' when they are): none, too many, an
    empty one, or more characters in all than max_embed_chars."""
    if not texts:
        return 'texts is empty: give at least one text to embed'
    if len(texts) > settings.max_embed_texts:
        return (f'{len(texts)} texts exceed max_embed_texts {settings.max_embed_texts}: send '
                'them in several requests')
    empty = [index for index, text in enumerate(texts) if not text]
    if empty:
        return f"texts[{', '.join(map(str, empty))}] {'is' if len(empty) == 1 else 'are'} empty"
    characters = sum(len(text) for text in texts)
    if characters > settings.max_embed_chars:
        return (f'the texts hold {characters} characters in all, more than max_embed_chars '
                f'{settings.max_embed_chars}: send them in several requests')
    return ''


def embed(state_now: Callable[[], ServingState], texts: Sequence[str], truncate: bool,
          dimensions: int, settings: EmbeddingSettings) -> EmbedOutcome:
    """Serve one request: NOT_SERVING while the node serves no embeddings, INVALID_REQUEST
    for texts it refuses or Ollama refuses (400, its reason), SERVER_FAILED when the server or
    runner fails; state_now() is the node's serving state as it is now (read again after a
    failure: a deactivate that ended the request is NOT_SERVING, not a server failure)."""
    state = state_now()
    reason = state.embedding_not_serving_reason
    if reason or state.engine is None:
        return EmbedOutcome(EmbedErrorCode.NOT_SERVING, reason or 'no Ollama server is running')
    reason = refusal(texts, settings)
    if reason:
        return EmbedOutcome(EmbedErrorCode.INVALID_REQUEST, reason)
    model = state.embedding_model
    try:
        result = state.engine.embed(model, list(texts), truncate, dimensions)
    except RequestRefused as error:
        return EmbedOutcome(EmbedErrorCode.INVALID_REQUEST, str(error), model=model)
    except EngineError as error:
        now = state_now().embedding_not_serving_reason
        if now:
            return EmbedOutcome(EmbedErrorCode.NOT_SERVING, f'{now} ({error})', model=model)
        return EmbedOutcome(EmbedErrorCode.SERVER_FAILED, str(error), model=model)
    return EmbedOutcome(EmbedErrorCode.NONE, vectors=result.vectors, model=model,
                        prompt_tokens=result.prompt_tokens)
