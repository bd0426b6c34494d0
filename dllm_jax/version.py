"""The package version (read by setup.py; stored in a run's provenance)."""

__version__ = '0.1.0'
