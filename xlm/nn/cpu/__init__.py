"""CPU fast paths, applied from outside the model code: `accelerate_training` (the trainer, on the
built model) and `prepacked_linears` (the ARLM predictor, around its decoding loop)."""

from .prepacked import prepacked_linears
from .training import accelerate_training

__all__ = ["accelerate_training", "prepacked_linears"]
