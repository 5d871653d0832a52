"""Helpers shared by several test files (tests/ is on sys.path: `from helpers.browser import ...`)."""
