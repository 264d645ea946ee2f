"""Talking to a trained LLaVA: the terminal chat (`llava chat`), one conversation at a time."""
