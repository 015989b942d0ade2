"""allen-sr."""
