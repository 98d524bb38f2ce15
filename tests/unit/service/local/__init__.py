"""Unit tests of service.local."""
