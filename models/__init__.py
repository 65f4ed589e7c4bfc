"""Shipped trained models: one folder per model with ``weights.safetensors`` and ``model.json``."""
