"""Measurement and documentation scripts, run from the project folder as `python -m scripts.NAME`."""
