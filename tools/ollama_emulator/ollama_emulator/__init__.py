"""A development stand-in for `ollama serve`.

It speaks Ollama's HTTP API, keeps Ollama's models directory layout and reproduces Ollama's
process tree (a server that spawns one runner process per loaded model in its own process
group), so that s100_llm can be tested on machines where Ollama cannot be installed. Its
"registry" is a local catalog of scripted models and one real model (SmolLM2-135M-Instruct run
by llama.cpp through xllamacpp). See docs/development.md (the Ollama
emulator) for what differs from Ollama.
"""

VERSION = '0.12.6-emulator'
