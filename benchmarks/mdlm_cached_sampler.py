"""MDLM cached vs uncached ancestral sampler, same model and seed, one run (T=1000, 128-token block).

    python benchmarks/mdlm_cached_sampler.py [--output mdlm_cache.json]

Equivalent to `python -m benchmarks.bench mdlm_cache`. With T steps and L masked positions a
step changes a row with probability 1 - (1 - 1/T)^L, so at T=1000, L=128 about 120 of the 1000
steps need the network; the uncached sampler calls it at every step. Both return the same tokens.
"""

import sys

from benchmarks.bench import main

if __name__ == "__main__":
    sys.exit(main(["mdlm_cache", *sys.argv[1:]]))
