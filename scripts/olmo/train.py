#!/usr/bin/env python
"""The original pipeline's training entry point, over `python -m olmo_jax.train`.

  python scripts/olmo/train.py --model_size 150M --data_path ./data --output_dir ./outputs \
      --config_file configs/training_configs/default_training.yaml

Takes every flag `python -m olmo_jax.train` takes (--model_size, --data_path, --output_dir and
--config_file are its aliases; --config.<field>=<value> overrides) and exits as it does.
"""

import os
import sys

# The repository this script belongs to comes first on the path, so it runs from a checkout
# without PYTHONPATH and never picks up another installed copy of the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from olmo_jax import runtime  # noqa: E402

runtime.init()  # first, before JAX loads: a host without accelerators runs on its CPU

from olmo_jax import train  # noqa: E402

if __name__ == "__main__":
  sys.exit(train.main())
