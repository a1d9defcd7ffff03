"""The ROS-free core of s100_llm: server supervision, the Ollama engine, sessions, resources.

Nothing here imports rclpy; the ROS layer (node.py, chat_action.py, diagnostics.py) wires these
pieces to parameters, lifecycle transitions, actions and topics.
"""
