"""The camera a chat goal can ask to see (Chat.Goal.use_camera): the latest frame of a topic.

The node subscribes to its camera_topic parameter while it is active (from activate to
deactivate: an inactive node spends nothing on frames) and keeps only the newest frame. A
topic whose name ends with '/compressed' carries sensor_msgs/CompressedImage (image_transport's
convention, e.g. /camera/image_raw/compressed), any other sensor_msgs/Image. The subscription
is best effort with a depth of 1 (sensor-data QoS): it matches best-effort and reliable
publishers alike, and never holds old frames back.

A frame's age is measured from its receipt, on the node's monotonic clock: the camera's
header stamps may come from an unsynchronized clock (or be zero), and what matters to a goal
is how recent the view is where the node stands.
"""

import threading
import time
from typing import Optional, Tuple, TYPE_CHECKING, Union

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import HistoryPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image

from . import guard

if TYPE_CHECKING:
    from rclpy.node import Node

Frame = Union[Image, CompressedImage]
CAMERA_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.BEST_EFFORT)


class Camera:
    """Holds the latest frame of camera_topic while started; latest() hands it to a goal."""

    def __init__(self, node: 'Node') -> None:
        self.node = node
        self.topic = ''
        self._subscription: Optional[Subscription] = None
        self._group = MutuallyExclusiveCallbackGroup()
        self._lock = threading.Lock()
        self._frame: Optional[Frame] = None
        self._received_at = 0.0

    def start(self, topic: str) -> None:
        """Subscribe to topic (at activate); '' = no camera. Frames of an earlier topic go."""
        self.stop()
        if not topic:
            return
        message_type = CompressedImage if topic.rstrip('/').endswith('/compressed') else Image
        subscription = self.node.create_subscription(
            message_type, topic, guard.subscription(self.node, f'camera {topic}', self._on_frame),
            CAMERA_QOS, callback_group=self._group)
        with self._lock:
            self._subscription, self.topic = subscription, subscription.topic_name
        self.node.get_logger().info(
            f'camera: subscribed to {self.topic} ({message_type.__name__})')

    def stop(self) -> None:
        """Unsubscribe and forget the frame (at deactivate, cleanup, shutdown)."""
        with self._lock:
            subscription, self._subscription = self._subscription, None
            self._frame = None
            self.topic = ''
        if subscription is not None:
            self.node.destroy_subscription(subscription)

    def _on_frame(self, frame: Frame) -> None:
        with self._lock:
            if self._subscription is not None:
                self._frame, self._received_at = frame, time.monotonic()

    def latest(self, max_age: float) -> Tuple[Optional[Frame], str]:
        """(the latest frame, '') if it was received at most max_age seconds ago, else
        (None, why not)."""
        with self._lock:
            frame, received_at, topic = self._frame, self._received_at, self.topic
        if not topic:
            return None, 'use_camera: the node has no camera (its camera_topic parameter is empty)'
        if frame is None:
            return None, f'use_camera: no frame received yet on {topic}'
        age = time.monotonic() - received_at
        if age > max_age:
            return None, (f'use_camera: the latest frame on {topic} is {age:.1f} s old; '
                          f'camera_max_age is {max_age:g}')
        return frame, ''
