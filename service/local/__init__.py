"""Local processes for development and tests: KRaft brokers and MirrorMaker 2 from Maven
Central jars, and nodes."""
