"""The model services' rules (core/model_requests.py): when they answer, what may not be
deleted, how a failed pull is classed, how often a pull's progress goes out."""

from s100_llm.core.model_requests import in_use_reason
from s100_llm.core.model_requests import not_serving_reason
from s100_llm.core.model_requests import ProgressThrottle
from s100_llm.core.model_requests import pull_error
from s100_llm.core.model_requests import PULL_ERRORS
from s100_llm.core.model_requests import replace_reason
from s100_llm.core.model_requests import served_as
from s100_llm.core.models import ModelProblem
from s100_llm.core.server import ServerStatus
from s100_llm.core.serving import ServingState

SERVER = ServerStatus(base_url='http://127.0.0.1:1', managed=True, pid=1, running=True,
                      exit_code=None, started_at=0.0, restarts=0)


def test_served_only_while_a_server_runs():
    assert not_serving_reason(ServingState(lifecycle='unconfigured')) == (
        'no Ollama server is running (state: unconfigured): configure starts one')
    running = ServingState(lifecycle='inactive', server=SERVER, engine=object())  # type: ignore
    assert not_serving_reason(running) == ''


def test_the_served_model_and_the_embedding_model_are_in_use_by_canonical_name():
    state = ServingState(model='qwen2.5:1.5b', embedding_model='all-minilm')
    assert served_as('qwen2.5:1.5b', state) == 'model'
    assert served_as('all-minilm:latest', state) == 'embedding_model'
    assert served_as('qwen2.5:0.5b', state) == ''
    assert in_use_reason('qwen2.5:1.5b', state) == (
        "'qwen2.5:1.5b' is the node's model: set model to another model and activate again "
        'first')
    assert in_use_reason('all-minilm:latest', state).endswith('configure again first')
    assert in_use_reason('qwen2.5:0.5b', state) == ''
    assert served_as('anything', ServingState()) == ''    # before the first configure


def test_the_served_model_under_another_spelling_is_in_use():
    # Ollama completes the host, namespace and tag and folds case: each of these deletes the
    # served model.
    state = ServingState(model='SmolLM2', embedding_model='all-minilm')
    for spelling in ('smollm2', 'SMOLLM2:latest', 'library/smollm2',
                     'registry.ollama.ai/library/smollm2:latest', ' smollm2 '):
        assert served_as(spelling, state) == 'model', spelling
    assert served_as('registry.ollama.ai/library/all-minilm', state) == 'embedding_model'
    for other in ('smollm2:135m', 'someone/smollm2', 'example.com/library/smollm2'):
        assert served_as(other, state) == '', other


def test_a_pull_may_not_replace_a_model_the_node_has_loaded():
    state = ServingState(model='smollm2', embedding_model='all-minilm', model_loaded=True)
    assert replace_reason('SMOLLM2:latest', state) == (
        "'SMOLLM2:latest' is the model the node serves now: store the new one under another "
        'name and set model to it, or deactivate first')
    assert replace_reason('all-minilm', state) == ''     # configured but not loaded
    assert replace_reason('qwen2.5:0.5b', state) == ''
    inactive = ServingState(model='smollm2')    # activate will read it again
    assert replace_reason('smollm2', inactive) == ''


def test_progress_goes_out_at_each_new_status_and_at_most_four_times_a_second():
    now = [0.0]
    throttle = ProgressThrottle(clock=lambda: now[0])
    sent = []
    for step in range(100):     # one report every 10 ms for 1 s
        now[0] = step / 100
        if throttle.due('pulling abc', step, 100):
            sent.append(step)
    assert sent == [0, 25, 50, 75]
    assert throttle.due('pulling abc', 100, 100)      # the one that completes the layer
    assert throttle.due('verifying sha256 digest', 0, 0)    # a new status at once
    assert throttle.due('writing manifest', 0, 0)


def test_a_failed_pull_is_classed_by_who_refused_it():
    def problem(code, message):
        return pull_error(ModelProblem(code, message))
    assert problem('invalid', "source '/x.gguf': no such file") == 'invalid'
    assert problem('invalid', 'pull nosuch: Ollama reported an error mid-stream: pull model '
                   'manifest: file does not exist') == 'refused'
    assert problem('invalid', 'import m: Ollama answered 400: unsupported architecture') == \
        'refused'
    assert problem('server', 'pull m: Ollama reported an error mid-stream: pull model '
                   'manifest: dial tcp: lookup registry.ollama.ai: no such host') == 'refused'
    assert problem('server', 'pull m: Ollama answered 500: internal error') == 'server'
    assert problem('server', 'pull m: the Ollama server is not reachable') == 'server'
    assert problem('no_space', 'pull m: Ollama reported an error mid-stream: write x: no space '
                   'left on device') == 'no_space'
    assert problem('canceled', "pull of 'm' canceled") == 'canceled'
    assert set(PULL_ERRORS) == {'invalid', 'refused', 'server', 'no_space', 'canceled'}
