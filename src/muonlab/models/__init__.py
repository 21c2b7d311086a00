"""Models: a nanoGPT-style transformer (gpt.py) and an MLP classifier (mlp.py)."""
