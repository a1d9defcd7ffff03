"""`s100-ollama-emulator serve`: used exactly like `ollama serve`."""

import asyncio
import datetime
import errno
import logging
import os
import signal
import socket
import sys
import time
from typing import List, Optional

from . import VERSION
from .settings import Settings

log = logging.getLogger('ollama')


class SlogFormatter(logging.Formatter):
    """Log lines in the shape of Ollama's slog output."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: A003 (logging's API)
        moment = datetime.datetime.fromtimestamp(record.created).astimezone()
        # Go's slog says WARN where Python's logging says WARNING.
        level = 'WARN' if record.levelno == logging.WARNING else record.levelname
        return (f'time={moment.isoformat(timespec="milliseconds")} level={level} '
                f'source=emulator msg="{record.getMessage()}"')


def _listen(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ':' in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as error:
        sock.close()
        reason = ('address already in use' if error.errno == errno.EADDRINUSE
                  else error.strerror.lower())
        print(f'Error: listen tcp {settings.host}:{settings.port}: bind: {reason}',
              file=sys.stderr)
        sys.exit(1)
    sock.listen(128)
    return sock


async def _serve(settings: Settings, sock: socket.socket) -> None:
    from aiohttp import web

    from .server import OllamaApi

    api = OllamaApi(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(number: int) -> None:
        name = signal.Signals(number).name
        if settings.faults.ignore_sigterm:
            log.warning('received %s: ignored (injected fault)', name)
        elif stop.is_set():
            log.info('received %s again: already shutting down', name)
        else:
            log.info('received %s: shutting down', name)
            stop.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, on_signal, number)
    if settings.faults.start_delay:
        # Ollama accepts TCP connections before it serves HTTP (GPU discovery runs first).
        await asyncio.sleep(settings.faults.start_delay)
    access = logging.getLogger('gin')
    runner = web.AppRunner(api.application(), handler_cancellation=True, access_log=access,
                           access_log_format='[GIN] %t | %s | %Tfs | %a | %r')
    await runner.setup()
    await web.SockSite(runner, sock).start()
    log.info('Listening on %s:%d (version %s)', settings.host, settings.port, VERSION)
    # Ollama would reach ollama.com (sign-in, cloud models) unless OLLAMA_NO_CLOUD is set; the
    # emulator never does, it only says which way it was started.
    log.info('cloud features %s', 'disabled (OLLAMA_NO_CLOUD)' if settings.no_cloud
             else 'enabled (the emulator contacts no one)')
    await stop.wait()
    # Like Ollama: in-flight streams are cut, runners SIGKILLed and waited for, exit 0.
    await api.scheduler.stop_all()
    log.info('shut down')
    logging.shutdown()
    os._exit(0)


def serve() -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SlogFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    gin = logging.getLogger('gin')
    gin.addHandler(logging.StreamHandler(sys.stdout))
    gin.setLevel(logging.INFO)
    gin.propagate = False
    if not os.environ.get('HOME'):
        print('Error: $HOME is not defined', file=sys.stderr)
        return 1
    try:
        settings = Settings.from_environment()
    except ValueError as error:
        print(f'Error: {error}', file=sys.stderr)
        return 1
    from .store import ModelStore

    try:
        ModelStore(settings.models_dir).create_directories()
    except OSError as error:
        print(f'Error: mkdir {error.filename}: {error.strerror.lower()}', file=sys.stderr)
        return 1
    sock = _listen(settings)
    asyncio.run(_serve(settings, sock))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ['serve']:
        return serve()
    if args[:1] == ['runner'] and '--model' not in args:
        # Ollama 0.2x's discovery runner (`runner --ollama-engine --port N`), started at every
        # server start: it reports the devices and ends. Before the heavy imports below, as
        # the real one costs little next to a model load.
        time.sleep(0.1)
        return 0
    if args[:1] == ['runner']:
        # What the server starts in the ollama-runner generation, as `ollama runner`.
        from . import runner

        runner.main(args[1:], loads_on_request=True)
        return 0
    if args[:1] in (['--version'], ['-v']):
        print(f'ollama version is {VERSION}')
        return 0
    print('Usage:\n  s100-ollama-emulator serve     Start the emulated ollama server\n'
          '(only `serve` is emulated; pull, list, ps and rm are done through the HTTP API)',
          file=sys.stderr)
    return 1


if __name__ == '__main__':
    sys.exit(main())
