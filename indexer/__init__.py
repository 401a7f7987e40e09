"""drca indexer package."""
