"""The robustness tier (see conftest.py)."""
