"""Local processes for development and tests: a KRaft broker from Maven Central jars, and nodes."""
