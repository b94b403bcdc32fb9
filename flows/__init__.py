"""loopline."""
