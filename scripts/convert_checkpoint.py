"""Convert a checkpoint between layouts; the same as `xlm convert` (see xlm/recipes/convert.py).

    python scripts/convert_checkpoint.py --from gpt2 --to xlm --out converted/gpt2
"""

import sys

from xlm.recipes.convert import main

if __name__ == "__main__":
    sys.exit(main())
