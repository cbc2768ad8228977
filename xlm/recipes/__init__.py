"""Recipes: train, evaluate, and the trainer loop they share."""
