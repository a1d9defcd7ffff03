"""s100_llm: a managed local LLM (Ollama) for ROS 2 robots."""
