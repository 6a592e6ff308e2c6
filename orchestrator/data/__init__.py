"""orchestrator/data."""
