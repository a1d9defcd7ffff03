"""QoS of the chat action: nothing a burst sends is overwritten.

rclpy's defaults keep the last 10 messages: a model streaming hundreds of chunks per second
would overwrite most feedback before the client takes it. Goal requests are worse: rclpy's
ActionServer takes one request per executor wake-up (about 1-3 ms each here), so a burst of a
few hundred goals waits in the DDS reader, and a KEEP_LAST reader drops the oldest unread
requests without any answer (5 clients x 100 goals lost 342-383 of them with depth 100).
KEEP_ALL keeps every request; DDS's reliable flow control holds back a writer instead of
dropping. Clients that want every chunk and many goals in flight pass the same profiles to
their ActionClient (see README): a client's own KEEP_LAST(10) default loses its own requests
and answers beyond 10 in flight, whatever the server does.
"""

from rclpy.qos import HistoryPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy

FEEDBACK_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
# Goal, cancel and result services: requests from many clients at once are all kept (depth is
# ignored with KEEP_ALL; rclpy requires a value).
SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=1000,
                         reliability=ReliabilityPolicy.RELIABLE)
