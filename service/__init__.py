"""The rate limiter node: FastAPI app, Kafka sync, settings, CLI and local broker manager."""
