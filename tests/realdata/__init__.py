"""The real-data tier (see conftest.py)."""
