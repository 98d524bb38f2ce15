"""What ties a node's answers to the caller's request: request ids and OpenTelemetry spans."""
