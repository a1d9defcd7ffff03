"""The real-server test mode (real_ollama.py): SmolLM2 imported from its GGUF through the
ollama client's blob upload and create (against the emulator, which answers them as Ollama
0.24 does), and which tests it keeps."""

import hashlib
import json
import os
import signal
import subprocess

import httpx
import ollama
import pytest
import real_ollama

from s100_llm.core.server import model_blob
from support import free_port
from support import wait_for


def test_smollm2_is_imported_from_its_gguf_with_a_template_that_has_tools(tmp_path):
    models_dir = tmp_path / 'models'
    real_ollama.prepare_models_dir(real_ollama.EMULATOR, models_dir)
    gguf = real_ollama.smollm2_gguf()
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert model_blob(str(models_dir), real_ollama.REAL_MODEL) == f'sha256-{digest}'
    port = free_port()
    server = subprocess.Popen(
        [real_ollama.EMULATOR, 'serve'], start_new_session=True,
        env=dict(os.environ, OLLAMA_HOST=f'127.0.0.1:{port}', OLLAMA_MODELS=str(models_dir),
                 OLLAMA_EMULATOR_THREADS='2'))
    try:
        url = f'http://127.0.0.1:{port}'

        def answers() -> bool:
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 'the emulator')
        client = ollama.Client(host=url, timeout=120)
        shown = client.show(real_ollama.REAL_MODEL)
        assert shown.template == real_ollama.SMOLLM2_TEMPLATE and 'tools' in shown.capabilities
        reply = client.chat(real_ollama.REAL_MODEL,
                            [{'role': 'user', 'content': 'What is the capital of France?'}],
                            options={'temperature': 0, 'num_predict': 16})
        assert 'Paris' in reply.message.content
        # A second import finds the model and leaves it as it is.
        manifest = models_dir / 'manifests' / 'registry.ollama.ai' / 'library' / 'smollm2'
        before = json.loads((manifest / '135m').read_text())
        real_ollama.import_smollm2(client)
        assert json.loads((manifest / '135m').read_text()) == before
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


class FakeItem:
    def __init__(self, fixtures, *markers):
        self.fixturenames = fixtures
        self.markers = markers

    def get_closest_marker(self, name):
        return name if name in self.markers else None


@pytest.mark.parametrize('item, needs_the_emulator', [
    (FakeItem(['active']), True),                          # a node on the scripted echo
    (FakeItem(['start_llm'], 'real_model'), False),
    (FakeItem(['start_llm'], 'real_model', 'emulator_only'), True),
    (FakeItem(['tmp_path']), False),                       # no node: not affected
])
def test_node_tests_run_against_a_real_server_only_when_marked_real_model(item,
                                                                          needs_the_emulator):
    assert real_ollama.emulator_only(item) is needs_the_emulator
