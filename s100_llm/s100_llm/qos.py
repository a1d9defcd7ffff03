"""QoS of the chat action, for the server side (chat_action.py, the services): the profiles
live in client.py, which explains them, so that a behaviour can copy that one file.
"""

from .client import FEEDBACK_QOS
from .client import SERVICE_QOS

__all__ = ['FEEDBACK_QOS', 'SERVICE_QOS']
