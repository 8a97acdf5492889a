"""Test-only agent actions (see plugin.py)."""
