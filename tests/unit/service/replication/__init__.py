"""Unit tests of service.replication."""
