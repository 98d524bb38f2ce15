"""Envoy's rate limit service (envoy.service.ratelimit.v3) and gRPC health, on a node."""
