"""QoS of the chat action: deep enough that bursts are not overwritten.

rclpy's defaults keep the last 10 messages: a model streaming hundreds of chunks per second
would overwrite most feedback before the client takes it, and 20 behaviours sending goals at
once would lose goal requests in the service queue. Clients that want every chunk and many
goals in flight pass the same profiles to their ActionClient (see README).
"""

from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy

FEEDBACK_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
# Goal, cancel and result services: requests from many clients at once are all queued.
SERVICE_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
