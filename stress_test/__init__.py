"""Load generators, benchmarks and the swarm runner."""
