"""The rclpy floor: a bare Chat action server that answers every goal with one feedback at once.

Same interface, QoS, callback group and executor as the node's chat action, with no model and
no node around it. What a client measures against it (goal sent to first feedback) is what
rclpy and DDS cost on this machine; bench/run.py subtracts it to show what the node itself adds.
Run: python bench/floor_server.py (in the ROS environment, with ROS_DOMAIN_ID set).
"""

import rclpy
from rclpy.action import ActionServer
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from s100_llm_msgs.action import Chat

from s100_llm.qos import FEEDBACK_QOS
from s100_llm.qos import SERVICE_QOS

# As many threads as the node's executor has with its default parameters (1 + 8 + 4).
THREADS = 13


def answer_at_once(goal_handle: ServerGoalHandle) -> Chat.Result:
    goal_handle.publish_feedback(Chat.Feedback(seq=0, delta='x'))
    goal_handle.succeed()
    return Chat.Result(text='x', feedback_count=1)


def main() -> None:
    rclpy.init()
    node = Node('llm')
    ActionServer(node, Chat, '~/chat', execute_callback=answer_at_once,
                 callback_group=ReentrantCallbackGroup(), feedback_pub_qos_profile=FEEDBACK_QOS,
                 goal_service_qos_profile=SERVICE_QOS, cancel_service_qos_profile=SERVICE_QOS,
                 result_service_qos_profile=SERVICE_QOS)
    executor = MultiThreadedExecutor(num_threads=THREADS)
    executor.add_node(node)
    try:
        while rclpy.ok():   # as the node does: a lost shutdown wake-up must not hang the exit
            executor.spin_once(timeout_sec=1.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
