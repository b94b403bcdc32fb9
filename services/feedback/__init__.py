"""The feedback service: join feedback to predictions, learn online, watch drift."""
