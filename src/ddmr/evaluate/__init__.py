"""Evaluation: metrics per pair, stored test pairs, the runner over methods, tables."""
