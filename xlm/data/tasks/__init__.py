"""Tasks: datasets with prompts and targets, plus their task-specific scoring.

Each task module (e.g. :mod:`xlm.data.tasks.star`) is imported on demand; nothing heavy is
re-exported here.
"""
