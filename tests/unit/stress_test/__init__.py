"""Unit tests of stress_test."""
