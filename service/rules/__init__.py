"""Limit rules: the model, the --rules document, and the compacted rules topic (hot reload)."""
