"""Scoring a model: greedy and sampled pass@1, extra test sets, drift from the start, answer shapes."""
