"""Users: persistent models, the repository that keeps their indexes, and the rules above it."""
