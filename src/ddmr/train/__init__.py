"""Training: profiles, the Lightning module, runs, fine-tuning and exported model files."""
