"""Experiments: thin drivers that build configs, call the one training loop and the report."""
