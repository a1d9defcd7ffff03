"""core/model_sources.py: the Modelfile grammar and how sources are resolved."""

import hashlib
import os
import resource
import signal

import pytest

from s100_llm.core import model_sources as models


def test_modelfile_instructions_quotes_and_comments(tmp_path):
    (tmp_path / 'w.gguf').write_bytes(b'GGUF')
    parsed = models.parse_modelfile(
        '# comment\nfrom ./w.gguf\nTEMPLATE """{{ .System }}\n{{ .Prompt }}"""\n'
        'SYSTEM "Be brief."\nPARAMETER temperature 0.3\nPARAMETER num_ctx 1024\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER stop <|endoftext|>\nLICENSE MIT\n',
        str(tmp_path))
    assert parsed.source == str(tmp_path / 'w.gguf')
    assert parsed.template == '{{ .System }}\n{{ .Prompt }}'
    assert parsed.system == 'Be brief.'
    assert parsed.parameters == {'temperature': 0.3, 'num_ctx': 1024,
                                 'stop': ['<|im_end|>', '<|endoftext|>']}
    assert parsed.license == ['MIT']


def test_from_an_installed_model_stays_a_name(tmp_path):
    assert models.parse_modelfile('FROM llama3.2:1b\n', str(tmp_path)).source == 'llama3.2:1b'
    assert models.parse_modelfile('FROM ./missing.gguf', str(tmp_path)).source == str(
        tmp_path / 'missing.gguf')


@pytest.mark.parametrize('text, error', [
    ('SYSTEM hi\n', 'no FROM line'),
    ('FROM x\nBOGUS y\n', "line 2: unknown instruction 'BOGUS'"),
    ('FROM x\nTEMPLATE """never closed\n', 'line 2: unterminated'),
    ('FROM x\nPARAMETER temperature\n', 'line 2: PARAMETER needs a name and a value'),
    ('FROM x\nADAPTER ./lora.gguf\n', 'line 2: ADAPTER is not supported'),
])
def test_malformed_modelfiles_name_the_line(tmp_path, text, error):
    with pytest.raises(ValueError, match=error):
        models.parse_modelfile(text, str(tmp_path))


def test_sources_resolve_to_the_files_to_upload(tmp_path):
    (tmp_path / 'w.gguf').write_bytes(b'GGUF' + b'\0' * 8)
    (tmp_path / 'Modelfile').write_text('FROM w.gguf\nSYSTEM hi\n')
    tuned = tmp_path / 'tuned'
    tuned.mkdir()
    for name in ('config.json', 'model-00001.safetensors', 'tokenizer.json', 'README.md',
                 'optimizer.safetensors'):
        (tuned / name).write_text('{}')
    assert models.resolve_source(str(tmp_path / 'w.gguf')).files == {
        'w.gguf': str(tmp_path / 'w.gguf')}
    from_modelfile = models.resolve_source(str(tmp_path / 'Modelfile'))
    assert from_modelfile.kind == 'gguf' and from_modelfile.modelfile.system == 'hi'
    directory = models.resolve_source(str(tuned))
    assert directory.kind == 'safetensors'
    assert sorted(directory.files) == ['config.json', 'model-00001.safetensors',
                                       'tokenizer.json']


def test_unusable_sources_are_named(tmp_path):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'Modelfile').write_text('FROM llama3.2\n')
    with pytest.raises(models.SourceError, match='needs config.json and model\\*.safetensors'):
        models.resolve_source(str(tmp_path / 'empty'))
    with pytest.raises(models.SourceError, match='names an installed model'):
        models.resolve_source(str(tmp_path / 'Modelfile'))


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path):
    # A FIFO with no writer would block open() for ever (the serving lock or the pull slot
    # held); the test's own timeout is the liveness bound.
    os.mkfifo(tmp_path / 'fifo')
    (tmp_path / 'Modelfile').write_text('FROM ./fifo\n')
    for source in (tmp_path / 'fifo', tmp_path / 'Modelfile', '/dev/zero'):
        with pytest.raises(models.SourceError, match='neither a regular file nor a directory'):
            models.resolve_source(str(source))


def test_a_modelfile_from_a_modelfile_is_refused_not_followed(tmp_path):
    (tmp_path / 'self').write_text('FROM ./self\n')
    (tmp_path / 'a').write_text('FROM ./b\n')
    (tmp_path / 'b').write_text('FROM ./a\n')
    for source in ('self', 'a'):
        with pytest.raises(models.SourceError, match='names weights, not another Modelfile'):
            models.resolve_source(str(tmp_path / source))


@pytest.mark.parametrize('content', [
    'null', '[1]', '{"models": 5, "hashes": []}', '{"models": {"m:latest": 1}}',
    '{"hashes": {"PATH": 5}}', '{"hashes": {"PATH": [1]}}'])
def test_a_damaged_record_file_is_read_as_empty_entries(tmp_path, content):
    weights = tmp_path / 'w.gguf'
    weights.write_bytes(b'GGUF' + b'\0' * 8)
    record = tmp_path / 'models' / models.RECORD_DIR / models.RECORD_FILE
    record.parent.mkdir(parents=True)
    record.write_text(content.replace('PATH', str(weights)))
    records = models.ImportRecords(str(tmp_path / 'models'))
    assert records.imported_from('m') == ''
    assert records.file_digest(str(weights)) == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_record_file_that_cannot_be_written_leaves_no_partial_file(tmp_path):
    # A full disk (the import just filled it), as a file size limit: the write fails part way.
    records = models.ImportRecords(str(tmp_path))
    records.record('m', 'a' * 64)
    records.hashes.update({f'/weights/{index}': [1, 2, 'b' * 64] for index in range(100)})
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))
    try:
        with pytest.raises(OSError):
            records.save()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert os.listdir(tmp_path / models.RECORD_DIR) == []
    records.save()      # the next save writes it
    assert models.ImportRecords(str(tmp_path)).imported_from('m') == 'a' * 64
