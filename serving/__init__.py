"""Talking to a trained LLaVA: the terminal chat (`llava chat`), and `llava serve`'s chat page and OpenAI-compatible
API. Prompts and images reach the model exactly as in training (`processing.conversation`, `processing.images`)."""
