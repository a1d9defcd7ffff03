"""core/models.py against the emulator through the ollama client: list, delete, pull with
progress, storage guard and cancel, import from a GGUF, a Modelfile and a safetensors directory,
and what every failure leaves behind (nothing)."""

import json
import os
import pathlib
import shutil
import struct
import threading

import httpx
import pytest

from real_ollama import smollm2_gguf

from s100_llm.core import models
from s100_llm.core.config import ServerSettings
from s100_llm.core.engine import OllamaEngine
from s100_llm.core.server import OllamaServer
from support import free_port


@pytest.fixture
def start(tmp_path):
    started = []

    def start_with(env: str = ''):
        models_dir = str(tmp_path / 'models')
        server = OllamaServer(ServerSettings(host=f'127.0.0.1:{free_port()}',
                                             ollama_bin='s100-ollama-emulator',
                                             ollama_env=env),
                              models_dir, lambda level, line: None)
        server.start()
        engine = OllamaEngine(server.base_url, 60, models_dir=models_dir)
        started.append((server, engine))
        return engine

    yield start_with
    for server, engine in started:
        engine.close()
        server.stop()


@pytest.fixture
def engine(start):
    return start()


def gguf_bytes(file_type: int) -> bytes:
    """A tiny valid GGUF: architecture llama, the given general.file_type, one F32 tensor."""
    def text(value: str) -> bytes:
        return struct.pack('<Q', len(value)) + value.encode()
    header = b'GGUF' + struct.pack('<IQQ', 3, 1, 2)
    header += text('general.architecture') + struct.pack('<I', 8) + text('llama')
    header += text('general.file_type') + struct.pack('<II', 4, file_type)
    header += text('w') + struct.pack('<IQIQ', 1, 16, 0, 0)
    return header + b'\0' * (-len(header) % 32) + b'\1' * 64


def blobs(engine):
    return sorted(os.listdir(os.path.join(engine.models_dir, 'blobs')))


def nothing(*_):
    pass


def test_list_reports_each_model_and_which_is_loaded(engine):
    assert models.list_models(engine) == []
    models.pull_model(engine, 'echo', engine.models_dir, nothing, threading.Event())
    models.pull_model(engine, 'thinker', engine.models_dir, nothing, threading.Event())
    engine.load('thinker')
    listed = {entry.name: entry for entry in models.list_models(engine)}
    assert set(listed) == {'echo:latest', 'thinker:latest'}
    thinker = listed['thinker:latest']
    assert thinker.loaded and not listed['echo:latest'].loaded
    assert thinker.capabilities == ['completion', 'thinking']
    assert thinker.family == 'qwen2' and thinker.parameter_size == '1M'
    assert thinker.quantization == 'F16'
    assert thinker.size > 0 and len(thinker.digest) == 64


def test_pull_reports_progress_with_totals_and_returns_the_entry(engine):
    seen = []
    entry = models.pull_model(engine, 'smollm2:135m', engine.models_dir,
                              lambda status, done, total: seen.append((status, done, total)),
                              threading.Event())
    assert entry.name == 'smollm2:135m' and entry.quantization == 'Q4_1'
    totals = [total for _, _, total in seen if total]
    assert totals and max(totals) >= smollm2_gguf().stat().st_size
    assert seen[-1][0] == 'success'
    assert models.models_size(engine.models_dir) >= entry.size


def test_pull_of_an_unknown_model_is_invalid(engine):
    with pytest.raises(models.ModelProblem, match='file does not exist') as caught:
        models.pull_model(engine, 'nosuch', engine.models_dir, nothing, threading.Event())
    assert caught.value.code in ('invalid', 'server')


def test_cancel_mid_pull_stops_it_and_leaves_no_partial_blob(engine):
    canceled = threading.Event()
    before = blobs(engine)

    def progress(status, done, total):
        if total and 0 < done < total:
            canceled.set()
    with pytest.raises(models.ModelProblem) as caught:
        models.pull_model(engine, 'smollm2:135m', engine.models_dir, progress, canceled)
    assert caught.value.code == 'canceled'
    assert blobs(engine) == before
    assert models.list_models(engine) == []


def test_pull_beyond_the_free_space_is_refused_with_both_figures(engine, monkeypatch):
    monkeypatch.setattr(models, 'free_space', lambda models_dir: 1024 * 1024)
    with pytest.raises(models.ModelProblem, match=r'needs \d+\.\d MiB .* only 1\.0 MiB free'
                       ) as caught:
        models.pull_model(engine, 'smollm2:135m', engine.models_dir, nothing,
                          threading.Event())
    assert caught.value.code == 'no_space'
    assert blobs(engine) == []


def test_delete_frees_the_blobs_no_other_model_shares(engine, tmp_path):
    models.pull_model(engine, 'smollm2:135m', engine.models_dir, nothing, threading.Event())
    # A second name of the same weights: deleting one keeps the shared GGUF blob.
    models.import_model(engine, 'mine', str(smollm2_gguf()), '', engine.models_dir, nothing,
                        threading.Event())
    gguf_size = smollm2_gguf().stat().st_size
    freed = models.delete_model(engine, 'smollm2:135m')
    assert 0 < freed < gguf_size
    records = models.ImportRecords(engine.models_dir)
    assert records.imported_from('mine') == records.source_digest(str(smollm2_gguf()))
    assert models.delete_model(engine, 'mine') >= gguf_size
    # Gone: an activate with model_source imports it again.
    assert models.ImportRecords(engine.models_dir).imported_from('mine') == ''
    with pytest.raises(models.ModelProblem, match="model 'mine' not found") as caught:
        models.delete_model(engine, 'mine')
    assert caught.value.code == 'invalid'


def test_import_a_gguf_uploads_it_once_and_creates_a_model_that_answers(engine):
    seen = []
    entry = models.import_model(engine, 'robot', str(smollm2_gguf()), '', engine.models_dir,
                                lambda *line: seen.append(line), threading.Event())
    assert entry.name == 'robot:latest' and entry.family == 'llama'
    assert any(status.startswith('uploading ') for status, _, _ in seen)
    reply = engine.client.generate(model='robot', prompt='Say hi', options={'num_predict': 4})
    assert reply.done
    # The blob is on the server now: a second import uploads nothing.
    seen.clear()
    models.import_model(engine, 'robot2', str(smollm2_gguf()), '', engine.models_dir,
                        lambda *line: seen.append(line), threading.Event())
    assert not any(status.startswith('uploading ') for status, _, _ in seen)


def test_import_a_modelfile_with_a_relative_from_and_its_instructions(engine, tmp_path):
    shutil.copy(smollm2_gguf(), tmp_path / 'weights.gguf')
    modelfile = tmp_path / 'Modelfile'
    modelfile.write_text('# the robot\nFROM ./weights.gguf\nSYSTEM """You are a robot.\n'
                         'Be brief."""\nPARAMETER temperature 0.2\nPARAMETER stop "<|im_end|>"\n'
                         'TEMPLATE "{{ .Prompt }}"\n')
    models.import_model(engine, 'robot', str(modelfile), '', engine.models_dir, nothing,
                        threading.Event())
    # The ollama client's ShowResponse has no `system`: the answer as Ollama sent it.
    shown = httpx.post(engine.base_url + '/api/show', json={'model': 'robot'}).json()
    assert shown['system'] == 'You are a robot.\nBe brief.'
    assert shown['template'] == '{{ .Prompt }}'
    assert 'temperature' in shown['parameters'] and '<|im_end|>' in shown['parameters']


def test_a_corrupt_gguf_is_refused_and_leaves_nothing(engine, tmp_path):
    corrupt = tmp_path / 'corrupt.gguf'
    corrupt.write_bytes(smollm2_gguf().read_bytes()[:1 << 20])
    with pytest.raises(models.ModelProblem) as caught:
        models.import_model(engine, 'broken', str(corrupt), '', engine.models_dir, nothing,
                            threading.Event())
    assert caught.value.code == 'invalid', caught.value.message
    assert blobs(engine) == [] and models.list_models(engine) == []


def test_a_file_that_is_no_model_is_named(engine, tmp_path):
    junk = tmp_path / 'notes.txt'
    junk.write_bytes(b'\x00\x01 not a model')
    with pytest.raises(models.ModelProblem, match='is not a model') as caught:
        models.import_model(engine, 'x', str(junk), '', engine.models_dir, nothing,
                            threading.Event())
    assert caught.value.code == 'invalid'
    with pytest.raises(models.ModelProblem, match='cannot be read: No such file'):
        models.import_model(engine, 'x', str(tmp_path / 'missing.gguf'), '', engine.models_dir,
                            nothing, threading.Event())


def test_a_source_file_the_node_may_not_read_is_invalid(engine, tmp_path, monkeypatch):
    # The node runs as root in the tests: a file of another user's is denied by hand.
    tuned = tmp_path / 'tuned'
    tuned.mkdir()
    (tuned / 'config.json').write_text('{}')
    (tuned / 'model.safetensors').write_bytes(b'\0' * 16)
    real_open = open

    def denying_open(path, *args, **kwargs):
        if str(path).endswith('model.safetensors'):
            raise PermissionError(13, 'Permission denied', str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr('builtins.open', denying_open)
    with pytest.raises(models.ModelProblem, match='model.safetensors cannot be read: '
                                                  'Permission denied') as caught:
        models.import_model(engine, 'x', str(tuned), '', engine.models_dir, nothing,
                            threading.Event())
    assert caught.value.code == 'invalid'


def test_a_cancel_stops_the_import_while_it_reads_the_source(engine, tmp_path, monkeypatch):
    # Hashing a multi-GB source takes minutes on the robot: a cancel (or the node's cleanup)
    # takes effect there too, before anything is sent to the server.
    source = tmp_path / 'big.gguf'
    source.write_bytes(b'GGUF' + b'\0' * (3 << 20))
    monkeypatch.setattr(engine, 'has_blob', lambda digest: pytest.fail('the server was asked'))
    canceled = threading.Event()
    canceled.set()
    records = models.ImportRecords(engine.models_dir)
    with pytest.raises(models.ModelProblem, match='canceled') as caught:
        models.import_model(engine, 'x', str(source), '', engine.models_dir, nothing,
                            canceled, records)
    assert caught.value.code == 'canceled'
    assert records.hashes == {}     # not read to its end


def test_a_finished_import_leaves_a_concurrent_pulls_files_alone(start, tmp_path):
    # Activate's pull (or an operator's) may start while an import uploads: the blobs that
    # pull writes are new and not yet referenced by a manifest, and not the import's to remove.
    engine = start('OLLAMA_EMULATOR_PULL_RATE=4194304')     # smollm2:135m takes 24 s
    writing = threading.Event()
    outcome = []
    puller = threading.Thread(target=lambda: outcome.append(models.pull_model(
        engine, 'smollm2:135m', engine.models_dir,
        lambda status, done, total: done and writing.set(), threading.Event())))

    def uploading(status: str, done: int, total: int) -> None:
        if not puller.is_alive() and not writing.is_set():
            puller.start()
            assert writing.wait(60)     # the pull's first bytes are on disk
    weights = tmp_path / 'f16.gguf'
    weights.write_bytes(gguf_bytes(1))
    try:
        models.import_model(engine, 'mine', str(weights), 'q8_0', engine.models_dir,
                            uploading, threading.Event())
    finally:
        puller.join(120)
    assert outcome and outcome[0].name == 'smollm2:135m'


def test_quantizing_a_quantized_gguf_is_refused_with_ollamas_message(engine):
    with pytest.raises(models.ModelProblem,
                       match='quantization is only supported for F16, BF16 and F32 models'
                       ) as caught:
        models.import_model(engine, 'q', str(smollm2_gguf()), 'q4_K_M', engine.models_dir,
                            nothing, threading.Event())
    assert caught.value.code == 'invalid'
    assert blobs(engine) == []


def test_a_quantization_ollama_does_not_offer_is_its_refusal(engine, tmp_path):
    f16 = tmp_path / 'f16.gguf'
    f16.write_bytes(gguf_bytes(file_type=1))
    with pytest.raises(models.ModelProblem, match='unsupported quantization type Q3_K_S - '
                                                  'supported types are F32, F16') as caught:
        models.import_model(engine, 'small', str(f16), 'q3_K_S', engine.models_dir, nothing,
                            threading.Event())
    assert caught.value.code == 'invalid'
    assert blobs(engine) == []


def test_quantizing_an_f16_gguf_keeps_only_the_quantized_weights(engine, tmp_path):
    f16 = tmp_path / 'f16.gguf'
    f16.write_bytes(gguf_bytes(file_type=1))
    entry = models.import_model(engine, 'small', str(f16), 'q4_K_M', engine.models_dir,
                                nothing, threading.Event())
    assert entry.quantization == 'Q4_K_M'
    # The uploaded F16 blob is no model's: removed, not left for Ollama's next start.
    assert set(blobs(engine)) == models.referenced_blobs(engine.models_dir)


def test_a_safetensors_directory_of_an_unknown_architecture_is_refused(engine, tmp_path):
    directory = tmp_path / 'tuned'
    directory.mkdir()
    (directory / 'config.json').write_text(json.dumps({'architectures': ['RobotForCausalLM']}))
    (directory / 'model.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{}      ')
    (directory / 'tokenizer.json').write_text('{}')
    with pytest.raises(models.ModelProblem,
                       match='unsupported architecture "RobotForCausalLM"') as caught:
        models.import_model(engine, 'tuned', str(directory), '', engine.models_dir, nothing,
                            threading.Event())
    assert caught.value.code == 'invalid'
    assert blobs(engine) == []


def test_a_full_disk_during_the_import_is_no_space_and_leaves_nothing(start, tmp_path):
    engine = start('OLLAMA_EMULATOR_DISK_FREE=1048576')
    with pytest.raises(models.ModelProblem, match='no space left on device') as caught:
        models.import_model(engine, 'big', str(smollm2_gguf()), '', engine.models_dir, nothing,
                            threading.Event())
    assert caught.value.code == 'no_space'
    assert blobs(engine) == []


def test_the_storage_guard_refuses_an_import_before_uploading(engine, monkeypatch):
    monkeypatch.setattr(models, 'free_space', lambda models_dir: 1024)
    with pytest.raises(models.ModelProblem, match=r'needs .* MiB .* only 0\.0 MiB free'
                       ) as caught:
        models.import_model(engine, 'big', str(smollm2_gguf()), '', engine.models_dir, nothing,
                            threading.Event())
    assert caught.value.code == 'no_space'
    assert blobs(engine) == []


def test_cancel_during_the_upload_leaves_nothing(engine):
    canceled = threading.Event()

    def progress(status, done, total):
        if status.startswith('uploading'):
            canceled.set()
    with pytest.raises(models.ModelProblem) as caught:
        models.import_model(engine, 'robot', str(smollm2_gguf()), '', engine.models_dir,
                            progress, canceled)
    assert caught.value.code == 'canceled'
    assert blobs(engine) == [] and models.list_models(engine) == []


def test_free_space_of_a_directory_still_to_create(tmp_path):
    assert models.free_space(str(tmp_path / 'not' / 'yet')) == shutil.disk_usage(tmp_path).free
    assert models.models_size(str(tmp_path / 'not')) == 0


def test_source_digest_changes_with_the_content_and_is_cached(tmp_path):
    gguf = tmp_path / 'm.gguf'
    gguf.write_bytes(b'GGUF' + b'\x00' * 100)
    models_dir = str(tmp_path / 'models')

    def digest(directory: str = models_dir) -> str:
        records = models.ImportRecords(directory)
        found = records.source_digest(str(gguf))
        records.save()
        return found

    first = digest()
    assert (pathlib.Path(models_dir) / 's100_llm' / 'imports.json').is_file()
    stat = gguf.stat()
    # New bytes, same size and mtime: the cache answers (the file is not read again).
    gguf.write_bytes(b'GGUF' + b'\x01' * 100)
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert digest() == first
    # Without the cache, or with a new mtime, the content counts.
    assert digest(str(tmp_path / 'other')) != first
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert digest() != first
