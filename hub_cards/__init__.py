"""Model cards for checkpoints, adapters and projector artifacts (filled in by the Hub issue)."""
