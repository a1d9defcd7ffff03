"""`ros2 run s100_llm remember_recall "<question>"`: answer a question from what the robot
remembers, with the facts closest to it found by embeddings (the example to copy).

It embeds the facts it remembers once (~/embed: the node's embedding_model), embeds the
question, takes the facts whose vectors are closest to the question's (the dot product: the
vectors have unit length, so it is their cosine similarity) and asks the chat model with those
facts in the prompt, then prints the answer. A real robot would keep the facts' vectors (places,
objects, earlier instructions) and embed only what is new.

    ros2 run s100_llm remember_recall "Where is the charging dock?"
    ros2 run s100_llm remember_recall --fact "The spare battery is in the van." \
        "Where is the battery?"
"""

import argparse
import sys
from typing import List, Optional, Sequence

import rclpy
from rclpy.node import Node
from s100_llm_msgs.action import Chat
from s100_llm_msgs.srv import Embed

from s100_llm.client import ChatClient
from s100_llm.client import ChatError

FACTS = [
    'The charging dock is in the hall, next to the front door.',
    'The kitchen is at the end of the corridor, on the left.',
    'Visitors sign in at the reception desk before they go upstairs.',
    'The red toolbox is kept on the lowest shelf of the workshop.',
    'The lab door is locked every evening after six.',
]


def closest(question: Sequence[float], facts: Sequence[Sequence[float]], count: int) -> List[int]:
    """The indexes of the `count` fact vectors most similar to the question's, best first."""
    similarity = [sum(q * f for q, f in zip(question, fact)) for fact in facts]
    return sorted(range(len(facts)), key=lambda index: -similarity[index])[:count]


def prompt_with(facts: Sequence[str], question: str) -> str:
    remembered = '\n'.join(f'- {fact}' for fact in facts)
    return f'Answer from these facts only:\n{remembered}\nQuestion: {question}'


class RememberRecall(Node):
    """Embeds facts and questions through ~/embed and asks the chat action with the closest."""

    def __init__(self, llm_node: str) -> None:
        super().__init__('remember_recall')
        self.embed_client = self.create_client(Embed, f"{llm_node.rstrip('/')}/embed")
        self.chat = ChatClient(self, f"{llm_node.rstrip('/')}/chat")

    def embed(self, texts: List[str]) -> Optional[List[List[float]]]:
        """One vector per text, or None (the reason is logged)."""
        future = self.embed_client.call_async(Embed.Request(texts=texts))
        rclpy.spin_until_future_complete(self, future)
        reply = future.result()
        if reply.error_code != Embed.Response.NONE:
            self.get_logger().error(f'embedding failed: {reply.error_message} '
                                    f'(error_code {reply.error_code})')
            return None
        return [list(embedding.vector) for embedding in reply.embeddings]

    def ask(self, prompt: str) -> Optional[str]:
        """The chat model's answer, or None (the reason is logged)."""
        try:
            return self.chat.ask(Chat.Goal(prompt=prompt)).text
        except ChatError as error:
            self.get_logger().error(f'the model did not answer: {error.error_message} '
                                    f'(error_code {error.error_code})')
            return None

    def answer(self, question: str, facts: List[str], count: int) -> Optional[str]:
        vectors = self.embed(facts + [question])
        if vectors is None:
            return None
        recalled = [facts[i] for i in closest(vectors[-1], vectors[:-1], count)]
        self.get_logger().info(f'recalled: {recalled}')
        return self.ask(prompt_with(recalled, question))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='remember_recall', description=__doc__.split('\n')[0])
    parser.add_argument('question', help='what to ask about the remembered facts')
    parser.add_argument('--fact', action='append', default=[],
                        help='a fact to remember instead of the built-in ones (repeatable)')
    parser.add_argument('--top', type=int, default=2, help='how many facts go into the prompt')
    parser.add_argument('--node', default='/llm', help='the llm node (default /llm)')
    parser.add_argument('--wait', type=float, default=10.0,
                        help='seconds to wait for the embed service and the chat action')
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    rclpy.init()
    behaviour = RememberRecall(args.node)
    try:
        if not (behaviour.embed_client.wait_for_service(timeout_sec=args.wait)
                and behaviour.chat.wait_for_server(args.wait)):
            print(f'no embed service or chat action at {args.node} (is the node running?)',
                  file=sys.stderr)
            return 2
        answer = behaviour.answer(args.question, args.fact or FACTS, args.top)
        if answer is None:
            return 1
        print(answer)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        behaviour.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    sys.exit(main())
