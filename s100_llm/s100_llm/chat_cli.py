"""`ros2 run s100_llm chat`: talk to the node from a terminal.

    ros2 run s100_llm chat "What is the capital of France?"
    ros2 run s100_llm chat                     # interactive; one session for the whole talk
    ros2 run s100_llm chat --format command.schema.json "Go to the kitchen"
    ros2 run s100_llm chat --tools robot_tools.json "Go to the kitchen"
    ros2 run s100_llm chat --image door.jpg "Is the door open?"
    ros2 run s100_llm chat --camera "What is on the table?"   # the node's camera_topic
    ros2 run s100_llm chat --info              # the served model and its capabilities
    ros2 run s100_llm chat --embed "text a" "text b" ...   # vector size, cosine similarities
    ros2 run s100_llm chat --models            # the models in the node's models_dir

Tokens are printed as they stream; reasoning is shown dimmed (--hide-thinking to hide it);
Ctrl-C cancels the goal (the model stops at once) and, in interactive mode, a second Ctrl-C
or an empty line / EOF quits. The statistics are printed at the end of each answer, and for a
goal the node did not serve, its error code and reason (e.g. NOT_SERVING, INVALID_GOAL).
The tool calls the model asks for are printed one a line, `tool call <id>: <name> <arguments>`;
in interactive mode the CLI then asks for each result and sends them back in the session.
Interactive mode and --info show the model and its capabilities (from the node's Model
diagnostics status). In interactive mode, --image files go with the first question and
--camera sends the current camera frame with every question. --embed embeds the texts
with the node's embedding_model (the ~/embed service) and prints the vectors' size and each
pair's cosine similarity (the vectors have unit length: their dot product). --models lists
the models stored in the node's models_dir (the ~/list_models service): name, size,
quantization, whether loaded, which ones the node serves, and the disk they take and leave.
"""

import argparse
import enum
import itertools
import json
import pathlib
import signal
import sys
from typing import Any, Callable, Dict, List, Optional, TextIO, Type
import uuid

from diagnostic_msgs.msg import DiagnosticArray

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from s100_llm_msgs.action import Chat
from s100_llm_msgs.msg import Tool
from s100_llm_msgs.msg import ToolResult
from s100_llm_msgs.srv import Embed
from s100_llm_msgs.srv import ListModels
from sensor_msgs.msg import CompressedImage

from s100_llm.client import ChatClient as ChatAction
from s100_llm.client import ChatError
from s100_llm.client import GoalNotAccepted
from s100_llm.core.chat.request import ErrorCode
from s100_llm.core.embedding import EmbedErrorCode
from s100_llm.core.images import compressed_kind

# ListModels.srv's error codes, for their names.
ListErrorCode = enum.IntEnum('ListErrorCode', {
    name: getattr(ListModels.Response, name)
    for name in ('NONE', 'UNKNOWN', 'NOT_SERVING', 'SERVER_FAILED')})
DIM, RESET = '\x1b[2m', '\x1b[0m'
THINK = {'default': Chat.Goal.THINK_DEFAULT, 'on': Chat.Goal.THINK_ON,
         'off': Chat.Goal.THINK_OFF, 'low': Chat.Goal.THINK_LOW,
         'medium': Chat.Goal.THINK_MEDIUM, 'high': Chat.Goal.THINK_HIGH,
         'max': Chat.Goal.THINK_MAX}
# How long --info and interactive mode wait for the node's Model diagnostics status.
INFO_WAIT = 3.0


def code_name(codes: Type[enum.IntEnum], value: int) -> str:
    """The name of an error code; a code newer than this CLI is shown as its number."""
    try:
        return codes(value).name
    except ValueError:
        return f'error code {value}'


class UsageError(Exception):
    """A --format or --tools file that cannot be used; the message says why."""


def read_format(value: str) -> str:
    """--format: 'json' or the text of a JSON Schema file (the node validates the schema)."""
    if value in ('', 'json'):
        return value
    try:
        return pathlib.Path(value).read_text()
    except OSError as error:
        raise UsageError(f'--format: cannot read {value}: {error.strerror}') from None


def read_tools(path: str) -> List[Tool]:
    """--tools: a JSON list of tools, each {name, description, parameters} (a JSON Schema
    object), or Ollama's / OpenAI's {"type": "function", "function": {...}} form."""
    if not path:
        return []
    try:
        entries = json.loads(pathlib.Path(path).read_text())
    except OSError as error:
        raise UsageError(f'--tools: cannot read {path}: {error.strerror}') from None
    except ValueError as error:
        raise UsageError(f'--tools: {path} is not JSON: {error}') from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f'--tools: {path} must hold a JSON list of tool objects')
    tools = []
    for entry in entries:
        function: Dict[str, Any] = entry.get('function', entry)
        parameters = function.get('parameters')
        tools.append(Tool(name=str(function.get('name', '')),
                          description=str(function.get('description', '')),
                          parameters_json=json.dumps(parameters) if parameters else ''))
    return tools


def read_images(paths: List[str]) -> List[CompressedImage]:
    """--image: each file as a CompressedImage, sent as it is (the node downscales it)."""
    images = []
    for path in paths:
        try:
            data = pathlib.Path(path).read_bytes()
        except OSError as error:
            raise UsageError(f'--image: cannot read {path}: {error.strerror}') from None
        kind = compressed_kind(data)
        if not kind:
            raise UsageError(f'--image: {path} is neither a JPEG nor a PNG file')
        images.append(CompressedImage(format=kind, data=data))
    return images


class ChatClient:
    def __init__(self, node: Node, action: str, out: TextIO, show_thinking: bool,
                 color: bool) -> None:
        self.node = node
        self.client = ChatAction(node, action)
        self.out = out
        self.show_thinking = show_thinking
        self.color = color
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self.model_status: Dict[str, str] = {}
        self._model_status_name = f"{action.strip('/').rsplit('/', 1)[0]}: Model"
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self._in_thinking = False
        self._printed = ''
        self.asking = False
        self.interrupted = False

    def wait_for_server(self, timeout: float) -> bool:
        return self.client.wait_for_server(timeout)

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name == self._model_status_name:
                self.model_status = {kv.key: kv.value for kv in status.values}

    def model_info(self, timeout: float) -> str:
        """'model <name>, capabilities: ...' from the node's Model status, or why not."""
        deadline = self.node.get_clock().now().nanoseconds + int(timeout * 1e9)
        self._spin_until(lambda: bool(self.model_status)
                         or self.node.get_clock().now().nanoseconds > deadline)
        if not self.model_status:
            return f'no Model status from {self._model_status_name.split(":")[0]} on /diagnostics'
        capabilities = self.model_status.get('capabilities') or 'unknown (model not loaded)'
        return f"model {self.model_status.get('model', '?')}, capabilities: {capabilities}"

    def on_sigint(self, number: int, frame: object) -> None:
        """Ctrl-C cancels the goal being asked; at the prompt it quits (KeyboardInterrupt).

        A flag, not an exception: KeyboardInterrupt raised wherever the executor happens to be
        can leave rclpy's wait set half torn down, and the cancel then never completes.
        """
        if not self.asking:
            raise KeyboardInterrupt
        self.interrupted = True

    def ask(self, goal: Chat.Goal) -> Optional[Chat.Result]:
        """Send the goal, stream it; Ctrl-C cancels it. None when it was not accepted (the node
        accepts every goal, and ends one it cannot serve with an error_code)."""
        self.asking, self.interrupted = True, False
        try:
            result = self.client.ask(goal, self._on_feedback, self._spin_until,
                                     cancel_when=self._cancel_requested)
        except GoalNotAccepted:
            print('\n[the goal was not accepted]', file=sys.stderr)
            return None
        except ChatError as error:      # printed with the stats
            result = error.result
        finally:
            self.asking = False
        self._end_thinking()
        # rclpy drops feedback that arrives after the result: print what it did not show.
        if result.text.startswith(self._printed):
            self.out.write(result.text[len(self._printed):])
            self.out.flush()
        self._printed = ''
        return result

    def _cancel_requested(self) -> bool:
        if self.interrupted:
            print('\n[canceling]', file=sys.stderr)
        return self.interrupted

    def _spin_until(self, condition: Callable[[], bool]) -> None:
        # Python runs the SIGINT handler only between bytecodes and rcl_wait is not woken by
        # signals: wake at least every 0.1 s so that Ctrl-C is seen while the model is quiet.
        while not condition():
            self.executor.spin_once(timeout_sec=0.1)

    def _on_feedback(self, feedback: Chat.Feedback) -> None:
        if feedback.thinking_delta and self.show_thinking:
            if not self._in_thinking and self.color:
                self.out.write(DIM)
            self._in_thinking = True
            self.out.write(feedback.thinking_delta)
        if feedback.delta:
            self._end_thinking()
            self.out.write(feedback.delta)
            self._printed += feedback.delta
        self.out.flush()

    def _end_thinking(self) -> None:
        if self._in_thinking:
            self.out.write((RESET if self.color else '') + '\n')
            self._in_thinking = False


def print_tool_calls(result: Chat.Result, out: TextIO) -> None:
    for call in result.tool_calls:
        out.write(f'tool call {call.id}: {call.name} {call.arguments_json}\n')
    out.flush()


def print_stats(result: Chat.Result) -> None:
    stats = result.stats
    line = (f'[{result.done_reason}] {stats.completion_tokens} tokens, '
            f'{stats.tokens_per_second:.1f} tokens/s, first token after '
            f'{stats.time_to_first_token * 1000:.0f} ms, prompt {stats.prompt_tokens} tokens')
    if result.error_code != Chat.Result.NONE:
        line += f' - {code_name(ErrorCode, result.error_code)}: {result.error_message}'
    print('\n' + line, file=sys.stderr)


def embed_texts(client: ChatClient, service: str, texts: List[str], dimensions: int,
                wait: float) -> int:
    """--embed: the vectors' size and each pair's cosine similarity, or why there are none."""
    embed = client.node.create_client(Embed, service)
    if not embed.wait_for_service(timeout_sec=wait):
        print(f'no embed service at {service} (is the node running?)', file=sys.stderr)
        return 2
    future = embed.call_async(Embed.Request(texts=texts, dimensions=dimensions))
    client._spin_until(future.done)
    reply = future.result()
    if reply.error_code != Embed.Response.NONE:
        print(f'{code_name(EmbedErrorCode, reply.error_code)}: {reply.error_message}',
              file=sys.stderr)
        return 1
    vectors = [list(embedding.vector) for embedding in reply.embeddings]
    client.out.write(f'{len(vectors)} vector(s) of {len(vectors[0])} dimensions (model '
                     f'{reply.model}, {reply.prompt_tokens} prompt tokens)\n')
    for number, text in enumerate(texts, start=1):
        client.out.write(f'[{number}] {text}\n')
    for (i, a), (j, b) in itertools.combinations(enumerate(vectors, start=1), 2):
        similarity = sum(x * y for x, y in zip(a, b))
        client.out.write(f'cosine similarity [{i}] [{j}]: {similarity:.3f}\n')
    client.out.flush()
    return 0


def size_text(size: int) -> str:
    """Bytes as a person reads them on a models table (decimal units, like Ollama's)."""
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if size >= scale:
            return f'{size / scale:.1f} {unit}'
    return f'{size} B'


def list_models(client: ChatClient, service: str, wait: float) -> int:
    """--models: one line per model of the node's models_dir, or why there are none."""
    lister = client.node.create_client(ListModels, service)
    if not lister.wait_for_service(timeout_sec=wait):
        print(f'no list_models service at {service} (is the node running?)', file=sys.stderr)
        return 2
    future = lister.call_async(ListModels.Request())
    client._spin_until(future.done)
    reply = future.result()
    if reply.error_code != ListModels.Response.NONE:
        print(f'{code_name(ListErrorCode, reply.error_code)}: {reply.error_message}',
              file=sys.stderr)
        return 1
    rows = [('NAME', 'SIZE', 'QUANTIZATION', 'LOADED', 'SERVED')] + [
        (model.name, size_text(model.size), model.quantization or '-',
         'yes' if model.loaded else 'no',
         'embedding' if model.embedding else 'model' if model.served else '')
        for model in reply.models]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        client.out.write('  '.join(cell.ljust(width) for cell, width in zip(row, widths))
                         .rstrip() + '\n')
    client.out.write(f'{len(reply.models)} model(s), {size_text(reply.total_size)} on disk, '
                     f'{size_text(reply.free_space)} free\n')
    client.out.flush()
    return 0


def parse_arguments(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='chat', description=__doc__.split('\n')[0])
    parser.add_argument('prompt', nargs='?', help='the question; none: interactive mode')
    parser.add_argument('--node', default='/llm', help='the llm node (default /llm)')
    parser.add_argument('--system', default='', help='system prompt')
    parser.add_argument('--session', default='',
                        help='session id to continue (interactive mode makes one)')
    parser.add_argument('--think', choices=sorted(THINK), default='default')
    parser.add_argument('--hide-thinking', action='store_true')
    parser.add_argument('--max-tokens', type=int, default=0)
    parser.add_argument('--temperature', type=float, default=-1.0)
    parser.add_argument('--format', default='', metavar='json|SCHEMA_FILE',
                        help='structured output: "json", or a file holding a JSON Schema')
    parser.add_argument('--tools', default='', metavar='TOOLS_FILE',
                        help='a JSON file listing the tools the model may call')
    parser.add_argument('--image', action='append', default=[], metavar='FILE',
                        help='a JPEG or PNG file for the model to look at (repeatable)')
    parser.add_argument('--camera', action='store_true',
                        help="show the model the latest frame of the node's camera_topic")
    parser.add_argument('--info', action='store_true',
                        help='print the served model and its capabilities, then exit')
    parser.add_argument('--embed', nargs='+', metavar='TEXT',
                        help="embed the texts with the node's embedding_model; print the "
                        "vectors' size and the pairwise cosine similarities, then exit")
    parser.add_argument('--models', action='store_true',
                        help="list the models in the node's models_dir, then exit")
    parser.add_argument('--dimensions', type=int, default=0,
                        help='with --embed: shorten the vectors to this many dimensions')
    parser.add_argument('--wait', type=float, default=10.0,
                        help='seconds to wait for the action server')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        output_format, tools = read_format(args.format), read_tools(args.tools)
        images = read_images(args.image)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    # Ctrl-C cancels the goal (ChatClient.on_sigint); it must not shut rclpy down.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = Node(f'chat_cli_{uuid.uuid4().hex[:8]}')
    client = ChatClient(node, f"{args.node.rstrip('/')}/chat", sys.stdout,
                        show_thinking=not args.hide_thinking, color=sys.stdout.isatty())
    signal.signal(signal.SIGINT, client.on_sigint)
    try:
        if args.models:
            return list_models(client, f"{args.node.rstrip('/')}/list_models", args.wait)
        if args.embed:
            return embed_texts(client, f"{args.node.rstrip('/')}/embed", args.embed,
                               args.dimensions, args.wait)
        if not client.wait_for_server(args.wait):
            print(f'no chat action server at {args.node}/chat (is the node running?)',
                  file=sys.stderr)
            return 2
        if args.info:
            print(client.model_info(INFO_WAIT))
            return 0 if client.model_status else 1
        session = args.session or ('' if args.prompt else f'cli-{uuid.uuid4().hex[:8]}')

        def goal_for(prompt: str, tool_results: Optional[List[ToolResult]] = None) -> Chat.Goal:
            shown = list(images) if prompt else []
            images.clear()      # the files go with the first question only
            return Chat.Goal(prompt=prompt, system_prompt=args.system, session_id=session,
                             think=THINK[args.think], max_tokens=args.max_tokens,
                             temperature=args.temperature, format=output_format, tools=tools,
                             tool_results=tool_results or [], compressed_images=shown,
                             use_camera=args.camera and bool(prompt))
        if args.prompt:
            result = client.ask(goal_for(args.prompt))
            if result is None:
                return 1
            print_tool_calls(result, sys.stdout)
            print_stats(result)
            return 0 if result.error_code == Chat.Result.NONE else 1
        print(client.model_info(INFO_WAIT), file=sys.stderr)
        return interactive(client, goal_for)
    except KeyboardInterrupt:   # Ctrl-C while waiting for the server
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def interactive(client: ChatClient, goal_for) -> int:
    print('Type a question; an empty line or Ctrl-D quits, Ctrl-C cancels an answer.',
          file=sys.stderr)
    while True:
        try:
            prompt = input('> ')
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not prompt.strip():
            return 0
        result = client.ask(goal_for(prompt))
        # While the model asks for tools, the user plays them: each result goes back.
        while result is not None and result.tool_calls:
            print_tool_calls(result, client.out)
            print_stats(result)
            try:
                results = [ToolResult(tool_call_id=call.id, name=call.name,
                                      content=input(f'{call.name} result> '))
                           for call in result.tool_calls]
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            result = client.ask(goal_for('', results))
        if result is not None:
            print_stats(result)


if __name__ == '__main__':
    sys.exit(main())
