"""The package version, kept in one place (setup.py reads it without importing il_tf)."""
__version__ = "0.1.0"
