"""The training config: `--config configs/train.py:150M` (size as the config argument).

Composes model_configs/, training_configs/ and data_configs/; override any field on the
command line, e.g. `--config.train.steps=200 --config.model.variant=olmo2`.
"""

import ml_collections

from olmo_jax.config import load_sibling


def get_config(size: str = "4M") -> ml_collections.ConfigDict:
  from data_pipeline import recipe_config  # the data subtree is owned by the data pipeline

  c = ml_collections.ConfigDict()
  c.model = load_sibling(__file__, "model_configs/ladder.py", size)
  c.train = load_sibling(__file__, "training_configs/default_training.py")
  c.data = recipe_config.default_config()
  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.checkpoint = ml_collections.ConfigDict({
      "enabled": True,
      "every": -1,  # steps; -1: 1250 (2500 for 1B), as DataDecide saved
      "keep": 3,  # the newest K checkpoints are kept ...
      "keep_period": 0,  # ... plus every step divisible by this, for good (0: none)
      "async_save": True,
      # Resume guards (olmo_jax/restart_guard.py): a resume that changes the model or the data
      # stream is refused unless this is True ...
      "allow_config_change": False,
      # ... and a workdir whose checkpoints are all damaged is not started afresh unless this
      # is True (they are then moved aside to checkpoints/damaged/, never deleted).
      "start_fresh_if_damaged": False,
  })
  c.eval = ml_collections.ConfigDict({
      "every": 0,  # steps between in-loop evaluations; 0: off
      "batches": 4,  # held-out batches for the in-loop loss
      "tasks": "",  # tasks or suites scored in the loop too (eval/tasks.py), e.g. 'core'
      "limit": 200,  # documents per task (per MMLU subject) for the in-loop tasks
  })
  c.plan = ml_collections.ConfigDict({  # ahead-of-time plan (--dry_run; checked by every run)
      "check": True,  # stop before training when the compiled step does not fit the devices
      "headroom": 0.9,  # fraction of device memory the plan may use
      "mfu": 0.5,  # the MFU at which the plan states tokens/s
      "devices": 0,  # --dry_run for another topology: number of devices (0: those at hand)
      "platform": "auto",  # auto (the devices at hand) | cpu | gpu | tpu (compiled for it)
      "topology": "",  # tpu: the slice, e.g. 'v5e:4x4', 'v5p:2x2x2' (compile-only chips)
      "slices": 1,  # tpu: slices of that topology (multi-slice over DCN)
      "device_kind": "",  # gpu: a100_40gb | a100 (80 GB) | h100 | h200; '' = h100
      "hosts": 1,  # gpu: hosts the plan.devices GPUs are spread over
      "output": "",  # also write the plan as JSON to this file
      "device_memory_gb": 0.0,  # 0: from the device (CPU: available RAM / local devices)
  })
  return c
