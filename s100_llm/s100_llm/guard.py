"""Service, subscription and parameter callbacks that never end the node.

An exception raised in a callback (or, for a service, by the serialization of its answer,
which rclpy does after the callback returns) reaches the executor and ends the node's process.
Every such callback of the node is wrapped here: the exception is logged at ERROR with its
traceback, a service answers a fresh response (its error fields, when it has any, saying
"internal error: <cause>"), a subscription drops the message, a parameter change is refused
with that reason, and the node carries on. (The chat action guards its own.)
"""

import traceback
from typing import Any, Callable, List, Optional

from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message

# Fills a fresh response's error fields with the cause (e.g. error_code and error_message).
ErrorFields = Callable[[Any, str], None]


def service(node: Node, name: str, callback: Callable[[Any, Any], Any],
            error_fields: Optional[ErrorFields] = None,
            check_answer: bool = False) -> Callable[[Any, Any], Any]:
    """callback (request, response) -> response, guarded. check_answer: serialize the answer
    here, so that a value the message cannot carry (text that is not UTF-8, a number out of
    its field's range) is an internal error answered, not an exception in rclpy's send."""
    def guarded(request: Any, response: Any) -> Any:
        try:
            answer = callback(request, response)
            if check_answer:
                serialize_message(answer)
            return answer
        except Exception as error:
            cause = _report(node, name, error)
            fresh = type(response)()
            if error_fields is not None:
                error_fields(fresh, f'internal error: {cause}')
            return fresh
    return guarded


def subscription(node: Node, name: str,
                 callback: Callable[[Any], None]) -> Callable[[Any], None]:
    """callback (message), guarded: a message whose handling raised is dropped."""
    def guarded(message: Any) -> None:
        try:
            callback(message)
        except Exception as error:
            _report(node, name, error)
    return guarded


def parameters(node: Node, callback: Callable[[List[Parameter]], SetParametersResult]
               ) -> Callable[[List[Parameter]], SetParametersResult]:
    """An on-set-parameters callback, guarded: a change whose check raised is refused."""
    def guarded(changed: List[Parameter]) -> SetParametersResult:
        try:
            return callback(changed)
        except Exception as error:
            cause = _report(node, 'parameter change', error)
            return SetParametersResult(successful=False, reason=f'internal error: {cause}')
    return guarded


def _report(node: Node, name: str, error: Exception) -> str:
    cause = f'{type(error).__name__}: {error}'
    node.get_logger().error(f'{name}: internal error: {cause}\n{traceback.format_exc()}'
                            .rstrip())
    return cause
