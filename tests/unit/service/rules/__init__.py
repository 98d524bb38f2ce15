"""Unit tests of service.rules."""
