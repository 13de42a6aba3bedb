"""Runnable examples of tickflow (each one's docstring says how to run it)."""
