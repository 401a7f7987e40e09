"""drca service package."""
