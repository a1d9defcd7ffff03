"""What the node serves, as one immutable snapshot: ServingState.

The chat action and the diagnostics read the serving state only through this snapshot (the
node's `serving_state()`), never the node's or the server's attributes: a snapshot is taken
without a lock and stays consistent while it is used, whatever a transition or supervision
changes meanwhile.
"""

import dataclasses
from typing import Optional, Tuple

from .engine import OllamaEngine
from .server import ServerStatus


@dataclasses.dataclass(frozen=True)
class ServingState:
    """Everything a reader needs to know about the server and the model at one instant."""

    lifecycle: str = 'unconfigured'   # the node's lifecycle state label
    model: str = ''                   # the model the node serves ('' before the first configure)
    serving: bool = False             # chats are accepted now (active, model loaded, no recovery)
    not_serving_reason: str = ''      # why not, as a client should read it ('' when serving)
    model_loaded: bool = False
    capabilities: Tuple[str, ...] = ()
    context_length: int = 0
    pull_progress: Optional[float] = None   # 0..1 while a pull runs
    recovering: str = ''              # cause of a supervised restart or reload in progress
    server_error: str = ''            # what is wrong with the server ('' when nothing is)
    model_error: str = ''             # what is wrong with the model ('' when nothing is)
    models_dir: str = ''              # OLLAMA_MODELS as the server uses it (expanded)
    server: Optional[ServerStatus] = None    # None while no server is running or adopted
    runner_pids: Tuple[int, ...] = ()
    engine: Optional[OllamaEngine] = None    # the HTTP client of the server (chats, /api/ps)
