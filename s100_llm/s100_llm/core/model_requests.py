"""The rules of the node's model services, ROS-free: when they are served, which models may
not be deleted, how a failed pull is classed, and how often a pull's progress is reported.

model_services.py (the ROS layer) asks these before it calls core/models.py.
"""

import time
from typing import Callable, Optional

from . import models
from .engine import canonical_name
from .models import ModelProblem
from .serving import ServingState

# At most this many progress reports per second while a pull runs (Ollama reports every ~60 ms
# per layer); a new status (a new layer, "verifying", "writing manifest") is reported at once.
PROGRESS_RATE = 4.0


def not_serving_reason(state: ServingState) -> str:
    """Why no model request can be served now ('' when an Ollama server runs)."""
    if state.engine is None or state.server is None:
        return f'no Ollama server is running (state: {state.lifecycle}): configure starts one'
    return ''


def model_key(name: str) -> str:
    """The model a name denotes, as Ollama resolves it (types/model/name.go): the tag completed
    with latest, the host and namespace with registry.ollama.ai/library, and case folded (its
    manifest paths are lower case), so 'SmolLM2' and 'registry.ollama.ai/library/smollm2:latest'
    are the model 'smollm2'."""
    path, _, last = canonical_name(name.strip()).rpartition('/')
    parts = path.split('/') if path else []
    parts = ['registry.ollama.ai', 'library'][:max(2 - len(parts), 0)] + parts
    return '/'.join(parts + [last]).lower()


def served_as(name: str, state: ServingState) -> str:
    """'model' or 'embedding_model' when the node serves the model as that parameter, else ''
    (names compared as Ollama resolves them: model_key)."""
    wanted = model_key(name)
    for served, parameter in ((state.model, 'model'), (state.embedding_model, 'embedding_model')):
        if served and model_key(served) == wanted:
            return parameter
    return ''


def in_use_reason(name: str, state: ServingState) -> str:
    """Why the model may not be deleted ('' when it may): the node serves it."""
    parameter = served_as(name, state)
    if not parameter:
        return ''
    # model applies at activate; embedding_model at configure (the server makes room for it).
    then = 'activate' if parameter == 'model' else 'configure'
    return (f"'{name}' is the node's {parameter}: set {parameter} to another model and {then} "
            'again first')


def replace_reason(name: str, state: ServingState) -> str:
    """Why a pull or import may not write the model under this name now ('' when it may): the
    node has it loaded and serves it. Replaced underneath, the node's capabilities and context
    length would describe the old model. While the node is inactive it may: activate reads the
    model again (that is how an operator prepares the configured model)."""
    parameter = served_as(name, state)
    loaded = {'model': state.model_loaded, 'embedding_model': state.embedding_loaded}
    if not parameter or not loaded[parameter]:
        return ''
    return (f"'{name}' is the {parameter} the node serves now: store the new one under another "
            f'name and set {parameter} to it, or deactivate first')


# What a failed pull or import is, as PullModel.action tells it apart (its result codes).
PULL_ERRORS = ('invalid', 'refused', 'server', 'no_space', 'canceled')


def pull_error(problem: ModelProblem) -> str:
    """'invalid' (the goal or the local source is at fault: name, path, file), 'refused'
    (Ollama refused it: its 4xx answer or its error line, e.g. not a model, an architecture it
    cannot convert, a quantization it refuses, no such model in the registry, the registry
    unreachable), 'server' (the server failed or is unreachable), 'no_space' or 'canceled'."""
    if problem.code in (models.NO_SPACE, models.CANCELED):
        return problem.code
    # engine.describe()'s wording of what Ollama itself said.
    said = ('Ollama answered 4' in problem.message
            or 'Ollama reported an error mid-stream' in problem.message)
    if said or problem.code == models.REFUSED:
        return 'refused'
    return 'invalid' if problem.code == models.INVALID else 'server'


class ProgressThrottle:
    """Decides which progress reports of a pull go out: each new status at once, the bytes of
    the same status at most PROGRESS_RATE times a second, and the report that completes it."""

    def __init__(self, rate: float = PROGRESS_RATE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._status = ''
        self._sent_at: Optional[float] = None

    def due(self, status: str, completed: int, total: int) -> bool:
        now = self._clock()
        if (status == self._status and self._sent_at is not None
                and now - self._sent_at < self._interval and completed < total):
            return False
        self._status, self._sent_at = status, now
        return True
