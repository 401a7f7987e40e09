"""drca training package."""
