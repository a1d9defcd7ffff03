"""The model-management API as Ollama answers it: create from GGUF (checked header, quantize),
safetensors refusals, delete, pull partials, and a full disk (OLLAMA_EMULATOR_DISK_FREE)."""

import json
import os
import struct

import httpx
import ollama
import pytest

from ollama_emulator import catalog


def gguf_bytes(file_type: int, tensor_bytes: int = 64) -> bytes:
    """A tiny valid GGUF: architecture llama, the given general.file_type, one F32 tensor."""
    def text(value: str) -> bytes:
        return struct.pack('<Q', len(value)) + value.encode()
    header = b'GGUF' + struct.pack('<IQQ', 3, 1, 2)
    header += text('general.architecture') + struct.pack('<I', 8) + text('llama')
    header += text('general.file_type') + struct.pack('<II', 4, file_type)
    header += text('w') + struct.pack('<IQIQ', 1, tensor_bytes // 4, 0, 0)
    header += b'\0' * (-len(header) % 32)
    return header + b'\1' * tensor_bytes


def upload(emulator, path) -> str:
    return emulator.client.create_blob(path)


def create_lines(emulator, **body):
    reply = httpx.post(emulator.url + '/api/create', json=body, timeout=60)
    return reply.status_code, [json.loads(line) for line in reply.text.splitlines()]


def test_quantize_from_f16_and_the_refusals_ollama_gives(start_emulator, tmp_path):
    emulator = start_emulator()
    f16 = tmp_path / 'f16.gguf'
    f16.write_bytes(gguf_bytes(1))
    digest = upload(emulator, f16)
    status, lines = create_lines(emulator, model='small', files={'f16.gguf': digest},
                                 quantize='q4_K_M')
    assert status == 200 and lines[-1] == {'status': 'success'}
    assert {'status': 'quantizing F16 model to Q4_K_M'} in lines
    shown = emulator.client.show('small')
    assert shown.details.quantization_level == 'Q4_K_M'
    assert shown.details.parent_model != emulator.models + '/blobs/' + digest.replace(':', '-')
    status, lines = create_lines(emulator, model='small', files={'f16.gguf': digest},
                                 quantize='q3_K_S')
    assert lines[-1] == {'error': 'unsupported quantization type Q3_K_S - supported types are '
                                  'F32, F16, Q4_K_S, Q4_K_M, Q8_0'}
    # The real SmolLM2 GGUF is Q4_1 (general.file_type 3): not quantizable again.
    real = catalog.MODELS['smollm2:135m'].gguf_path()
    digest = upload(emulator, real)
    status, lines = create_lines(emulator, model='again', files={real.name: digest},
                                 quantize='q8_0')
    assert lines[-1] == {'error': 'quantization is only supported for F16, BF16 and F32 models'}
    with pytest.raises(ollama.ResponseError, match='only supported for F16'):
        emulator.client.create('again', files={real.name: digest}, quantize='q8_0')


def test_a_corrupt_gguf_is_refused_with_ollamas_message(start_emulator, tmp_path):
    emulator = start_emulator()
    whole = gguf_bytes(1, tensor_bytes=4096)
    truncated = tmp_path / 'cut.gguf'
    truncated.write_bytes(whole[:-1024])
    status, lines = create_lines(emulator, model='cut',
                                 files={'cut.gguf': upload(emulator, truncated)})
    assert lines == [{'status': 'parsing GGUF'}, {
        'error': f'tensor "w" offset+size ({len(whole)}) exceeds file size ({len(whole) - 1024})'}]
    header_only = tmp_path / 'head.gguf'
    header_only.write_bytes(whole[:40])
    status, lines = create_lines(emulator, model='cut',
                                 files={'head.gguf': upload(emulator, header_only)})
    assert lines[-1] == {'error': 'unexpected EOF'}
    assert emulator.client.list().models == []


def test_safetensors_of_an_architecture_ollama_cannot_convert(start_emulator, tmp_path):
    emulator = start_emulator()
    (tmp_path / 'config.json').write_text(json.dumps({'architectures': ['RobotForCausalLM']}))
    (tmp_path / 'model.safetensors').write_bytes(b'\x02\x00\x00\x00\x00\x00\x00\x00{}')
    files = {name: upload(emulator, tmp_path / name)
             for name in ('config.json', 'model.safetensors')}
    status, lines = create_lines(emulator, model='robot', files=files)
    assert lines == [{'status': 'converting model'},
                     {'error': 'unsupported architecture "RobotForCausalLM"'}]


def test_upload_skips_a_blob_it_has_and_checks_the_digest(start_emulator, tmp_path):
    emulator = start_emulator()
    path = tmp_path / 'w.gguf'
    path.write_bytes(gguf_bytes(1))
    digest = upload(emulator, path)
    assert httpx.head(f'{emulator.url}/api/blobs/{digest}').status_code == 200
    wrong = 'sha256:' + '0' * 64
    reply = httpx.post(f'{emulator.url}/api/blobs/{wrong}', content=b'abc')
    assert reply.status_code == 400 and 'digest mismatch' in reply.json()['error']
    assert os.listdir(os.path.join(emulator.models, 'blobs')) == [digest.replace(':', '-')]


def test_a_full_disk_fails_upload_and_pull_with_enospc(start_emulator, tmp_path):
    emulator = start_emulator(OLLAMA_EMULATOR_DISK_FREE=str(1 << 20))
    big = tmp_path / 'big.gguf'
    big.write_bytes(gguf_bytes(1, tensor_bytes=2 << 20))
    with pytest.raises(ollama.ResponseError, match='no space left on device') as caught:
        upload(emulator, big)
    assert caught.value.status_code == 500
    assert os.listdir(os.path.join(emulator.models, 'blobs')) == []
    reply = httpx.post(emulator.url + '/api/pull', json={'model': 'smollm2:135m'}, timeout=60)
    last = json.loads(reply.text.splitlines()[-1])
    assert last['error'].startswith(f'write {emulator.models}/blobs/sha256-')
    assert last['error'].endswith('-partial: no space left on device')
    # As Ollama, the -partial file stays (for a resume).
    assert any(name.endswith('-partial')
               for name in os.listdir(os.path.join(emulator.models, 'blobs')))


def test_a_pull_whose_client_goes_away_keeps_its_partial_file(start_emulator):
    emulator = start_emulator()
    with httpx.stream('POST', emulator.url + '/api/pull', json={'model': 'smollm2:135m'},
                      timeout=60) as reply:
        for line in reply.iter_lines():
            progress = json.loads(line)
            if progress.get('completed'):
                break
    assert any(name.endswith('-partial')
               for name in os.listdir(os.path.join(emulator.models, 'blobs')))
    assert 'smollm2:135m' not in {m.model for m in emulator.client.list().models}


def test_offline_every_pull_fails_as_without_network(start_emulator):
    emulator = start_emulator(OLLAMA_EMULATOR_OFFLINE='1')
    with pytest.raises(ollama.ResponseError, match='lookup registry.ollama.ai: no such host'):
        emulator.client.pull('echo')
    assert emulator.client.list().models == []
