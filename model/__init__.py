"""drca model package."""
