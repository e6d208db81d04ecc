"""memory: streaming backup and restore of the memory-nexus session-memory database."""

__version__ = "0.1.0"
