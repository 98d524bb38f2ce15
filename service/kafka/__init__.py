"""Kafka plumbing shared by the state topic and the rules topic: topic admin, log dirs."""
