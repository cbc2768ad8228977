"""Data: tokenizers, tasks (datasets generated or loaded locally) and sequence metrics."""
