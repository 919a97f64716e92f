"""Training: HF Trainer integration, DeepSpeed configs and launch helpers."""
