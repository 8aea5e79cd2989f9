"""The per-worker training loop (plain PyTorch; runs with or without Ray)."""
