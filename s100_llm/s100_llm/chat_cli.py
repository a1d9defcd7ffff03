"""`ros2 run s100_llm chat`: talk to the node from a terminal.

    ros2 run s100_llm chat "What is the capital of France?"
    ros2 run s100_llm chat                     # interactive; one session for the whole talk

Tokens are printed as they stream; reasoning is shown dimmed (--hide-thinking to hide it);
Ctrl-C cancels the goal (the model stops at once) and, in interactive mode, a second Ctrl-C
or an empty line / EOF quits. The statistics are printed at the end of each answer, and for a
goal the node did not serve, its error code and reason (e.g. NOT_SERVING, INVALID_GOAL).
"""

import argparse
import signal
import sys
from typing import Callable, List, Optional, TextIO
import uuid

import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from s100_llm_msgs.action import Chat

from s100_llm.core.chat import ErrorCode
from s100_llm.qos import FEEDBACK_QOS

DIM, RESET = '\x1b[2m', '\x1b[0m'
THINK = {'default': Chat.Goal.THINK_DEFAULT, 'on': Chat.Goal.THINK_ON,
         'off': Chat.Goal.THINK_OFF}


class ChatClient:
    def __init__(self, node: Node, action: str, out: TextIO, show_thinking: bool,
                 color: bool) -> None:
        self.node = node
        self.client = ActionClient(node, Chat, action, feedback_sub_qos_profile=FEEDBACK_QOS)
        self.out = out
        self.show_thinking = show_thinking
        self.color = color
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self._in_thinking = False
        self._printed = ''
        self.asking = False
        self.interrupted = False

    def wait_for_server(self, timeout: float) -> bool:
        return self.client.wait_for_server(timeout_sec=timeout)

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
            future = self.client.send_goal_async(goal, feedback_callback=self._on_feedback)
            self._spin_until(future.done)
            handle = future.result()
            if not handle.accepted:
                print('\n[the goal was not accepted]', file=sys.stderr)
                return None
            result_future = handle.get_result_async()
            self._spin_until(lambda: result_future.done() or self.interrupted)
            if not result_future.done():
                print('\n[canceling]', file=sys.stderr)
                handle.cancel_goal_async()
                self._spin_until(result_future.done)
        finally:
            self.asking = False
        self._end_thinking()
        result = result_future.result().result
        # rclpy drops feedback that arrives after the result: print what it did not show.
        if result.text.startswith(self._printed):
            self.out.write(result.text[len(self._printed):])
            self.out.flush()
        self._printed = ''
        return result

    def _spin_until(self, condition: Callable[[], bool]) -> None:
        # Python runs the SIGINT handler only between bytecodes and rcl_wait is not woken by
        # signals: wake at least every 0.1 s so that Ctrl-C is seen while the model is quiet.
        while not condition():
            self.executor.spin_once(timeout_sec=0.1)

    def _on_feedback(self, message: Chat.Impl.FeedbackMessage) -> None:
        feedback = message.feedback
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


def print_stats(result: Chat.Result) -> None:
    stats = result.stats
    line = (f'[{result.done_reason}] {stats.completion_tokens} tokens, '
            f'{stats.tokens_per_second:.1f} tokens/s, first token after '
            f'{stats.time_to_first_token * 1000:.0f} ms, prompt {stats.prompt_tokens} tokens')
    if result.error_code != Chat.Result.NONE:
        line += f' - {ErrorCode(result.error_code).name}: {result.error_message}'
    print('\n' + line, file=sys.stderr)


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
    parser.add_argument('--wait', type=float, default=10.0,
                        help='seconds to wait for the action server')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    # Ctrl-C cancels the goal (ChatClient.on_sigint); it must not shut rclpy down.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = Node(f'chat_cli_{uuid.uuid4().hex[:8]}')
    client = ChatClient(node, f"{args.node.rstrip('/')}/chat", sys.stdout,
                        show_thinking=not args.hide_thinking, color=sys.stdout.isatty())
    signal.signal(signal.SIGINT, client.on_sigint)
    try:
        if not client.wait_for_server(args.wait):
            print(f'no chat action server at {args.node}/chat (is the node running?)',
                  file=sys.stderr)
            return 2
        session = args.session or ('' if args.prompt else f'cli-{uuid.uuid4().hex[:8]}')

        def goal_for(prompt: str) -> Chat.Goal:
            return Chat.Goal(prompt=prompt, system_prompt=args.system, session_id=session,
                             think=THINK[args.think], max_tokens=args.max_tokens,
                             temperature=args.temperature)
        if args.prompt:
            result = client.ask(goal_for(args.prompt))
            if result is None:
                return 1
            print_stats(result)
            return 0 if result.error_code == Chat.Result.NONE else 1
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
        if result is not None:
            print_stats(result)


if __name__ == '__main__':
    sys.exit(main())
