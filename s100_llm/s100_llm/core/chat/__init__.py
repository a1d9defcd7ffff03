"""One chat turn, ROS-free, in the order a goal meets it:

- request: the goal as plain values (ChatRequest), the interface's constants and error codes,
  Refusal (the one way a goal is refused: a code and a reason) and the outcome (ChatOutcome).
- checks: validate() and its parts, raising Refusal; the final answer against the format.
- stream: the goal in Ollama's terms (options, tools, format) and what comes back (reasoning
  split from the answer, text batched into feedback).
- run: ChatRun, which streams one goal into feedback and ends in its outcome.
"""
