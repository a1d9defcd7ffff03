"""Example behaviours built on the chat action (installed as console scripts)."""
