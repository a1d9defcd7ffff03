"""`ros2 run s100_llm robot_demo`: the pretend robot of the robot tools example.

It serves what config/robot_tools.yaml lets the model use, the way a robot's own nodes would:

    /navigate  s100_llm_demo_interfaces/action/Navigate  drives "there" in steps, with the
               distance still to go as feedback; a place it does not know aborts the goal
    /look      s100_llm_demo_interfaces/srv/Look          says what it sees of the target
    /say       std_msgs/msg/String                        logs the sentence (a TTS would speak)

Each request is logged, so what the model made the robot do reads in the log. On a robot these
are nav2, the camera's perception and the speech chain; only the robot_tools_file changes
(docs/robot-tools.md).
"""

import sys
import threading
from typing import Dict, List, Optional

import rclpy
from rclpy.action import ActionServer
from rclpy.action import CancelResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import String

try:
    from s100_llm_demo_interfaces.action import Navigate
    from s100_llm_demo_interfaces.srv import Look
except ImportError:     # the example's interfaces are built from this repository
    Navigate = Look = None

# Meters from the robot to each place it knows.
PLACES: Dict[str, float] = {'kitchen': 4.0, 'door': 2.5, 'dock': 1.0, 'hall': 3.0}
# What the camera "sees" of each target.
SIGHTS: Dict[str, str] = {'door': 'the door is open', 'kitchen': 'the kitchen is empty',
                          'dock': 'the dock is free'}
# Seconds per feedback step while driving; the pretend robot drives twice its max_speed, so
# the example does not keep you waiting.
STEP = 0.25


class RobotDemo(Node):
    """The pretend robot's action server, service and subscriber."""

    def __init__(self) -> None:
        super().__init__('robot_demo')
        group = ReentrantCallbackGroup()    # a long navigation does not block look or say
        self._stopped = threading.Event()
        self.navigate = ActionServer(self, Navigate, 'navigate', self._navigate,
                                     cancel_callback=lambda _: CancelResponse.ACCEPT,
                                     callback_group=group)
        self.create_service(Look, 'look', self._look, callback_group=group)
        self.create_subscription(String, 'say', self._say, 10, callback_group=group)

    def _navigate(self, goal: ServerGoalHandle) -> Navigate.Result:
        place, speed = goal.request.place, max(goal.request.max_speed, 0.1)
        self.get_logger().info(f'navigate to {place!r} at {speed:g} m/s')
        distance = PLACES.get(place.lower())
        if distance is None:
            goal.abort()
            return Navigate.Result(arrived=False, message=f'I do not know the place {place!r} '
                                   '(known: ' + ', '.join(PLACES) + ')')
        while distance > 0:
            if goal.is_cancel_requested:
                goal.canceled()
                self.get_logger().info(f'navigate to {place!r}: canceled')
                return Navigate.Result(arrived=False, message='stopped on request')
            goal.publish_feedback(Navigate.Feedback(distance_remaining=distance))
            # Waits on an Event, not sleep: the process's exit ends the drive at once.
            if self._stopped.wait(STEP):
                goal.abort()
                return Navigate.Result(arrived=False, message='the robot is shutting down')
            distance = max(0.0, distance - speed * STEP * 2)
        goal.succeed()
        return Navigate.Result(arrived=True, message=f'arrived at the {place}')

    def _look(self, request: Look.Request, response: Look.Response) -> Look.Response:
        sight = SIGHTS.get(request.target.lower())
        self.get_logger().info(f'look at {request.target!r}: {sight or "nothing"}')
        response.seen = sight is not None
        response.description = sight or f'no {request.target} in sight'
        return response

    def _say(self, message: String) -> None:
        self.get_logger().info(f'say: {message.data}')

    def stop(self) -> None:
        self._stopped.set()


def main(args: Optional[List[str]] = None) -> int:
    if Navigate is None:
        print('robot_demo needs the s100_llm_demo_interfaces package (built from this '
              'repository with colcon)', file=sys.stderr)
        return 2
    rclpy.init(args=args)
    robot = RobotDemo()
    executor = MultiThreadedExecutor()
    executor.add_node(robot)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        robot.stop()
        executor.shutdown(timeout_sec=1.0)
        robot.navigate.destroy()
        robot.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
