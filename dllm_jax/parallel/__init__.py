"""Meshes, logical-axis sharding rules and multi-host plumbing."""
