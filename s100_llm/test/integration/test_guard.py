"""guard.py (ROS layer: needs the ROS wheels, so not in unit/, which the jammy lane runs without
them): a callback that raises, or answers what its message cannot carry, is an internal
error answered and logged, never an exception left to the executor."""

from s100_llm_msgs.msg import ChatMessage
from s100_llm_msgs.srv import Embed
from s100_llm_msgs.srv import GetSession
from std_msgs.msg import String

from s100_llm import guard


class Logger:
    def __init__(self) -> None:
        self.errors = []

    def error(self, line: str) -> None:
        self.errors.append(line)


class FakeNode:
    """What guard.py uses of a node: its logger."""

    def __init__(self) -> None:
        self.logger = Logger()

    def get_logger(self) -> Logger:
        return self.logger


def _fill(response, cause):
    response.error_code = Embed.Response.UNKNOWN
    response.error_message = cause


def test_a_service_that_raises_answers_an_internal_error_with_the_traceback_logged():
    node = FakeNode()

    def broken(request, response):
        response.model = 'half-filled'
        raise RuntimeError('boom')
    answer = guard.service(node, '~/embed', broken, _fill)(Embed.Request(), Embed.Response())
    assert answer.error_code == Embed.Response.UNKNOWN
    assert answer.error_message == 'internal error: RuntimeError: boom'
    assert answer.model == ''       # a fresh response, not the half-filled one
    (line,), = [node.logger.errors]
    assert line.startswith('~/embed: internal error: RuntimeError: boom\nTraceback')
    assert 'in broken' in line


def test_an_answer_the_message_cannot_carry_is_caught_before_rclpy_sends_it():
    node = FakeNode()

    def surrogate(request, response):
        response.found = True
        response.messages = [ChatMessage(role='user', content='\ud800')]
        return response
    answer = guard.service(node, '~/get_session', surrogate, check_answer=True)(
        GetSession.Request(), GetSession.Response())
    assert not answer.found and not answer.messages
    assert 'UnicodeEncodeError' in node.logger.errors[0]


def test_a_good_answer_passes_unchanged():
    node = FakeNode()

    def good(request, response):
        response.found = True
        return response
    answer = guard.service(node, '~/get_session', good, check_answer=True)(
        GetSession.Request(), GetSession.Response())
    assert answer.found and not node.logger.errors


def test_a_subscription_that_raises_drops_the_message_and_logs():
    node = FakeNode()
    seen = []

    def on_message(message):
        seen.append(message.data)
        raise ValueError('bad frame')
    guarded = guard.subscription(node, 'camera /image', on_message)
    guarded(String(data='one'))
    guarded(String(data='two'))
    assert seen == ['one', 'two']
    assert len(node.logger.errors) == 2
    assert node.logger.errors[0].startswith('camera /image: internal error: ValueError: bad '
                                            'frame\nTraceback')


def test_a_parameter_check_that_raises_refuses_the_change():
    node = FakeNode()

    def check(changed):
        raise KeyError('cpu_cores')
    result = guard.parameters(node, check)([])
    assert not result.successful and result.reason == "internal error: KeyError: 'cpu_cores'"
    assert node.logger.errors[0].startswith('parameter change: internal error: KeyError')
