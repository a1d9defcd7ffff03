"""The runner process: holds one model and generates for the server, like Ollama's runner.

Started by the server in its process group and with no parent-death signal, exactly as Ollama
starts its runners: when the server is SIGKILLed, the runner lives on (orphaned) and keeps the
model in memory. Two generations, as the server's OLLAMA_EMULATOR_RUNNER chooses:

- llama-server (Ollama 0.30 and later): `python -m ollama_emulator.runner --model <blob>
  --port N --ctx-size C --parallel P [-t THREADS]`, serving the model at once.
- ollama-runner (Ollama up to 0.2x): `<the emulator's program> runner --model <blob> --port N`
  (the same program as the server, as `ollama runner` is), which loads the model when the
  server sends its load request (POST /load: threads, context, parallel). (The short
  discovery runner `runner --ollama-engine --port N` the server starts at every start is
  answered by cli.py.)

Both speak the subset of llama-server's API that the server uses: GET /health and a streamed
POST /v1/chat/completions (server-sent events, `timings` on the last chunk). GGUF weights are
served by llama.cpp itself (xllamacpp's embedded llama-server; behind a small proxy in the
ollama-runner generation, whose port must answer before the load); scripted weights by the
small aiohttp app below.
"""

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import aiohttp
from aiohttp import web

from . import perception
from . import structured
from .catalog import GGUF_MAGIC

_TOKEN = re.compile(r'\s*\S+|\s+')
# Ollama renders the prompt with the model's Modelfile TEMPLATE (plain ChatML for SmolLM2, no
# default system prompt); llama.cpp would otherwise use the GGUF's own template, which injects
# a system prompt of its own.
CHATML_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tokenize(text: str) -> List[str]:
    """Scripted models' tokens: words with their leading white space."""
    return _TOKEN.findall(text)


def text_of(message: Dict) -> str:
    """A message's text: its content, or the text parts of an OpenAI multimodal content."""
    content = message.get('content', '')
    if isinstance(content, list):
        return ''.join(part.get('text', '') for part in content if part.get('type') == 'text')
    return str(content)


def images_of(message: Dict) -> List[str]:
    """The images of a message: Ollama's `images` (base64) or the data URLs of an OpenAI
    multimodal content."""
    content = message.get('content')
    if not isinstance(content, list):
        return list(message.get('images') or [])
    return [part['image_url']['url'] for part in content if part.get('type') == 'image_url']


def scripted_logprobs(token: str, top: int) -> Dict[str, Any]:
    """llama-server's `logprobs` of one streamed token of a scripted model: the model is sure
    of every token (-0.05) except those with a question mark, its doubt (-3.0, with the token
    written with a full stop as the likelier alternative); `top` alternatives (at least 1, as
    Ollama asks llama-server for)."""
    doubt = '?' in token
    chosen = {'token': token, 'logprob': -3.0 if doubt else -0.05}
    others = [{'token': f'{token.strip()}{index}', 'logprob': -6.0 - index}
              for index in range(top)]
    ranked = ([{'token': token.replace('?', '.'), 'logprob': -0.06}] if doubt else []) + [
        chosen] + others
    return {'content': [dict(chosen, bytes=list(token.encode()),
                             top_logprobs=[dict(alternative,
                                                bytes=list(alternative['token'].encode()))
                                           for alternative in ranked[:max(top, 1)]])]}


def count_prompt_tokens(messages: List[Dict]) -> int:
    """Tokens a scripted model evaluates for a prompt (a role header costs 3, an image
    perception.IMAGE_TOKENS)."""
    return sum(3 + len(tokenize(text_of(message)))
               + perception.IMAGE_TOKENS * len(images_of(message)) for message in messages)


def scripted_pieces(script: str, messages: List[Dict], think: bool,
                    runner_format: Optional[Dict] = None,
                    tools: Optional[List[Dict]] = None,
                    level: str = '') -> Iterator[Tuple[str, Any]]:
    """(kind, piece) pairs a scripted model generates: kind 'thinking' or 'content' with a
    token, or 'tool_call' with {'name', 'arguments'} (see structured.py for format and tools).
    level: the reasoning level the runner was given (the reasoner says it in its thinking)."""
    last_user_message = next((m for m in reversed(messages) if m.get('role') == 'user'), {})
    last_user = text_of(last_user_message)
    if script == 'endless':
        index = 0
        while True:
            yield 'content', f'tok{index} '
            index += 1
    if script == 'thinker' and think:
        for token in tokenize(f'Thinking about: {last_user}'):
            yield 'thinking', token
    if script == 'reasoner' and think:
        for token in tokenize(f'Thinking ({level or "medium"}) about: {last_user}'):
            yield 'thinking', token
    if script == 'tooler':
        # The exchange since the question: one step of calls per model turn, then the answer.
        after = messages[len(messages) - next(
            (i for i, m in enumerate(reversed(messages)) if m.get('role') == 'user'),
            len(messages)):]
        steps = last_user.split(';')
        made = sum(1 for m in after if m.get('role') == 'assistant' and m.get('tool_calls'))
        calls = structured.tool_calls(tools or [], steps[made]) if made < len(steps) else []
        for call in calls:
            yield 'tool_call', call
        if calls:
            return
        results = [m for m in after if m.get('role') == 'tool']
        text = ('; '.join(f"{m.get('name', '')} returned: {text_of(m)}" for m in results)
                if results else f'No tool for: {last_user}')
    elif script == 'echo':
        text = ''.join(f"{m.get('role')}: {text_of(m)}\n" for m in messages)
    elif script in ('thinker', 'reasoner'):
        text = f'Answer: {last_user}'
    elif script == 'seer':
        images = images_of(last_user_message)
        text = perception.describe_images(images) if images else f'I see no image. {last_user}'
    else:
        raise ValueError(f'unknown script {script!r}')
    if runner_format is not None:
        text = structured.formatted(text, runner_format, last_user)
    for token in tokenize(text):
        yield 'content', token


class ScriptedRunner:
    """Generates a scripted model's tokens as llama-server would stream them."""

    def __init__(self, script: Dict, crash_after: int, token_rate: float,
                 prompt_rate: float = 0.0) -> None:
        self.script = script['script']
        self.context_length = int(script['context_length'])
        self.crash_after = crash_after
        self.token_interval = 1.0 / token_rate if token_rate > 0 else 0.0
        self.prompt_rate = prompt_rate
        self.generated = 0

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({'status': 'ok'})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get('messages', [])
        template_kwargs = body.get('chat_template_kwargs', {})
        think = bool(template_kwargs.get('enable_thinking', False))
        level = str(template_kwargs.get('reasoning_effort') or '')
        logprobs = int(body.get('top_logprobs') or 0) if body.get('logprobs') else None
        stops = [s for s in body.get('stop') or [] if s]
        runner_format = body.get('response_format')
        if runner_format and runner_format.get('type') == 'json_schema':
            try:
                structured.check_schema(runner_format['json_schema']['schema'])
            except structured.FormatError as error:   # llama-server's answer to a bad schema
                return web.json_response({'error': {'code': 400, 'message': str(error),
                                                    'type': 'invalid_request_error'}},
                                         status=400)
        pieces = scripted_pieces(self.script, messages, think, runner_format, body.get('tools'),
                                 level)
        try:
            first = next(pieces, None)
        except perception.ImageError as error:
            return web.json_response({'error': {'code': 500, 'message': str(error)}}, status=500)
        prompt_tokens = count_prompt_tokens(messages)
        limit = self.context_length - prompt_tokens
        if body.get('max_tokens'):
            limit = min(limit, int(body['max_tokens']))
        start = time.monotonic()
        if self.prompt_rate > 0:
            # Evaluating the prompt, as llama.cpp does before the first token; a client that
            # disconnects meanwhile stops it (the handler is canceled).
            await asyncio.sleep(prompt_tokens / self.prompt_rate)
        response = web.StreamResponse(headers={'Content-Type': 'text/event-stream'})
        await response.prepare(request)
        prompt_ms = (time.monotonic() - start) * 1000
        generation_start = time.monotonic()
        try:
            produced, finish_reason = await self._generate(
                response, itertools.chain([first] if first else [], pieces), stops, limit,
                logprobs)
        except ConnectionResetError:
            return response   # the server closed the stream: stop generating
        predicted_ms = (time.monotonic() - generation_start) * 1000
        final = {
            'choices': [{'index': 0, 'delta': {}, 'finish_reason': finish_reason}],
            'timings': {'prompt_n': prompt_tokens, 'prompt_ms': prompt_ms,
                        'predicted_n': produced, 'predicted_ms': predicted_ms},
        }
        await response.write(f'data: {json.dumps(final)}\n\ndata: [DONE]\n\n'.encode())
        return response

    async def _generate(self, response: web.StreamResponse, pieces: Iterator[Tuple[str, Any]],
                        stops: List[str], limit: int,
                        logprobs: Optional[int] = None) -> Tuple[int, str]:
        """Stream the script's pieces; returns (tokens produced, finish reason). logprobs:
        the top alternatives asked for with each token's log-probability (None: none)."""
        finish_reason = 'stop'
        produced = 0
        answer = ''
        calls = 0
        for kind, token in pieces:
            if produced >= limit:
                finish_reason = 'length'
                break
            if kind == 'tool_call':
                # llama-server streams a call as OpenAI deltas: arguments are a JSON text.
                await self._send(response, {'tool_calls': [{
                    'index': calls, 'id': f'call_{calls:08d}', 'type': 'function',
                    'function': {'name': token['name'],
                                 'arguments': json.dumps(token['arguments'])}}]})
                calls += 1
                produced += len(tokenize(json.dumps(token)))
                continue
            if kind == 'content' and stops:
                candidate = answer + token
                hit = min((candidate.find(s) for s in stops if s in candidate), default=-1)
                if hit >= 0:
                    token = candidate[:hit][len(answer):]
                    if token:
                        await self._send(response, {'content': token}, token, logprobs)
                    break
                answer = candidate
            if self.token_interval:
                await asyncio.sleep(self.token_interval)
            field = 'reasoning_content' if kind == 'thinking' else 'content'
            await self._send(response, {field: token}, token, logprobs)
            produced += 1
            self.generated += 1
            if self.crash_after and self.generated >= self.crash_after:
                print('runner: injected crash', file=sys.stderr, flush=True)
                os._exit(1)
        return produced, finish_reason

    async def embeddings(self, request: web.Request) -> web.Response:
        """The embedder's vectors (OpenAI's /v1/embeddings shape)."""
        body = await request.json()
        data, used = [], 0
        for index, text in enumerate(body.get('input') or []):
            tokens = tokenize(text)
            if len(tokens) > self.context_length:
                if not body.get('truncate', True):
                    return web.json_response({'error': {
                        'code': 400, 'message': 'the input length exceeds the context length'}},
                        status=400)
                tokens = tokens[:self.context_length]
            used += len(tokens)
            data.append({'index': index, 'embedding': perception.embed(''.join(tokens))})
        return web.json_response({'data': data, 'usage': {'prompt_tokens': used}})

    @staticmethod
    async def _send(response: web.StreamResponse, delta: Dict[str, Any], token: str = '',
                    logprobs: Optional[int] = None) -> None:
        choice: Dict[str, Any] = {'index': 0, 'delta': delta, 'finish_reason': None}
        if logprobs is not None and token:
            choice['logprobs'] = scripted_logprobs(token, logprobs)
        chunk = {'choices': [choice]}
        await response.write(f'data: {json.dumps(chunk)}\n\n'.encode())


def scripted_runner(script: Dict) -> ScriptedRunner:
    return ScriptedRunner(
        script,
        crash_after=int(os.environ.get('OLLAMA_EMULATOR_RUNNER_CRASH_AFTER') or 0),
        token_rate=float(os.environ.get('OLLAMA_EMULATOR_TOKEN_RATE') or 0),
        prompt_rate=float(os.environ.get('OLLAMA_EMULATOR_PROMPT_RATE') or 0))


def scripted_application(script: Dict) -> web.Application:
    runner = scripted_runner(script)
    app = web.Application(client_max_size=64 * 1024 * 1024)   # prompts of many MB, as Ollama
    app.router.add_get('/health', runner.health)
    app.router.add_post('/v1/chat/completions', runner.chat)
    app.router.add_post('/v1/embeddings', runner.embeddings)
    return app


def run(app: web.Application, port: int) -> None:
    # handler_cancellation: a client that disconnects stops the generation at once.
    web.run_app(app, host='127.0.0.1', port=port, print=None, handle_signals=True,
                handler_cancellation=True, access_log=None)


def gguf_params(path: str, port: int, context_length: int, parallel: int,
                threads: int) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = path
    params.n_ctx = context_length * parallel
    params.n_parallel = parallel
    params.port = port
    params.chat_template = CHATML_JINJA
    params.use_jinja = True
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # Ollama's runner keeps one cached prompt per slot (OLLAMA_NUM_PARALLEL) and nothing else;
    # llama-server would also keep older prompts in RAM and restore them (its prompt cache),
    # which makes two conversations alternating on one slot cheaper than on Ollama.
    params.cache_ram_mib = 0
    return params


def serve_gguf(path: str, port: int, context_length: int, parallel: int, threads: int) -> None:
    import xllamacpp

    server = xllamacpp.Server(  # noqa: F841 (serves until this process exits)
        gguf_params(path, port, context_length, parallel, threads))
    print(f'runner: llama.cpp serving {path} on port {port}', file=sys.stderr, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def _slog(message: str, **fields: str) -> None:
    """One log line in the shape of Ollama's runner (slog on stderr, read by the server)."""
    moment = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    extra = ''.join(f' {key}={value}' for key, value in fields.items())
    print(f'time={moment} level=INFO source=runner.go:950 msg={message}{extra}',
          file=sys.stderr, flush=True)


def load_request_text(request: Dict[str, Any]) -> str:
    """The load request as Ollama's runner logs it (Go's %+v of llm.LoadRequest)."""
    return ('"{Operation:commit LoraPath:[] Parallel:%d BatchSize:512 FlashAttention:false '
            'KvSize:%d KvCacheType: NumThreads:%d GPULayers:[] MultiUserCache:false '
            'ProjectorPath: MainGPU:0 UseMmap:true}"' % (
                request['parallel'], request['kv_size'], request['num_threads']))


class LoadingRunner:
    """The ollama-runner generation: the port answers at once, the model is loaded by the
    server's POST /load (threads, context and parallel travel there, not on the command line).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.scripted: Optional[ScriptedRunner] = None   # a scripted model, once loaded
        self.upstream: Optional[str] = None              # llama.cpp's URL for a GGUF model
        self.server: Any = None                          # keeps llama.cpp serving
        self.session: Optional[aiohttp.ClientSession] = None

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get('/health', self.health)
        app.router.add_post('/load', self.load)
        app.router.add_post('/v1/chat/completions', self.forward)
        app.router.add_post('/v1/embeddings', self.forward)
        return app

    async def health(self, request: web.Request) -> web.Response:
        if self.scripted is None and self.upstream is None:
            return web.json_response({'status': 'launched'}, status=503)
        return web.json_response({'status': 'ok'})

    async def load(self, request: web.Request) -> web.Response:
        body = await request.json()
        _slog('load', request=load_request_text(body))
        with open(self.path, 'rb') as weights:
            data = weights.read(4)
            if data != GGUF_MAGIC:
                self.scripted = scripted_runner(json.loads(data + weights.read()))
                return web.json_response({'success': True})
        import xllamacpp

        port = _free_port()
        params = gguf_params(self.path, port, int(body['kv_size']) // int(body['parallel']),
                             int(body['parallel']), int(body['num_threads']))
        # Loading takes a while: off the event loop, which keeps answering /health.
        self.server = await asyncio.get_running_loop().run_in_executor(
            None, xllamacpp.Server, params)
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            connector=aiohttp.TCPConnector(force_close=True))
        upstream = f'http://127.0.0.1:{port}'
        while True:
            try:
                async with self.session.get(upstream + '/health') as reply:
                    if reply.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
        self.upstream = upstream
        return web.json_response({'success': True})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.scripted is not None:
            if request.path == '/v1/embeddings':
                return await self.scripted.embeddings(request)
            return await self.scripted.chat(request)
        if self.upstream is None or self.session is None:
            return web.json_response({'error': {'code': 503, 'message': 'no model loaded'}},
                                     status=503)
        body = await request.read()
        async with self.session.post(self.upstream + request.path, data=body,
                                     headers={'Content-Type': 'application/json'}) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                'Content-Type': upstream.headers.get('Content-Type', 'application/json')})
            await response.prepare(request)
            async for piece in upstream.content.iter_any():
                await response.write(piece)
            await response.write_eof()
        return response


def main(argv: Optional[List[str]] = None, loads_on_request: bool = False) -> None:
    """loads_on_request: the ollama-runner generation (`<program> runner ...`), which waits for
    the server's load request; otherwise llama-server's command line."""
    parser = argparse.ArgumentParser(prog='ollama runner' if loads_on_request else 'llama-server')
    parser.add_argument('--model', required=True)
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--ctx-size', type=int, default=4096)
    parser.add_argument('--parallel', type=int, default=1)
    parser.add_argument('-t', '--threads', type=int,
                        default=int(os.environ.get('OLLAMA_EMULATOR_THREADS') or 0)
                        or os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if loads_on_request:
        run(LoadingRunner(args.model).application(), args.port)
        return
    with open(args.model, 'rb') as weights:
        head = weights.read(4)
        script = None if head == GGUF_MAGIC else json.loads(head + weights.read())
    if script is None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        serve_gguf(args.model, args.port, args.ctx_size, args.parallel, args.threads)
    else:
        run(scripted_application(script), args.port)


if __name__ == '__main__':
    main()
