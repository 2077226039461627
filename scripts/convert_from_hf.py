"""`python scripts/convert_from_hf.py --hf HF_DIR --output runs/from-hf`.

Reads an HF checkpoint (Llama, OLMo, OLMo 2, or AllenAI's hf_olmo layout such as a released
DataDecide checkpoint) through olmo_jax/hf.py and writes a params-only checkpoint in
OUTPUT/checkpoints/0 with a resolved config. `python -m olmo_jax.train --workdir OUTPUT` (with
the printed model flags) continues training from it with a fresh optimizer state; the
conversion and evaluation tools load it by directory like any other checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from olmo_jax import runtime  # noqa: E402

# The shape fields d_model, n_heads and n_layers come from the ladder size (or 'custom').
SHAPE_FIELDS = ("d_model", "n_heads", "n_layers")


def model_fields() -> tuple[str, ...]:
  """The architecture fields of ModelConfig the trainer must be given, besides the shape."""
  from olmo_jax.model import ARCHITECTURE_FIELDS
  return tuple(f for f in ARCHITECTURE_FIELDS if f not in SHAPE_FIELDS)


def train_config_for(mcfg, size_config: str | None = None):
  """(the RunSpec of a model, its size): a ladder size if the shapes match one."""
  from olmo_jax import config as config_lib
  from olmo_jax import sizes
  # A ladder size is the published shape; another MLP width makes the model 'custom'.
  size = next((name for name, s in sizes.LADDER.items()
               if (s.d_model, s.n_heads, s.n_layers, 0) == (mcfg.d_model, mcfg.n_heads,
                                                            mcfg.n_layers, mcfg.mlp_hidden)),
              "custom")
  c = config_lib.load_config_file(size_config or os.path.join(ROOT, "configs", "train.py"),
                                  size if size != "custom" else "4M")
  m = c.model
  m.size = size
  if size == "custom":
    for f in SHAPE_FIELDS:
      setattr(m, f, getattr(mcfg, f))
    n = sizes.non_embedding_params(mcfg.d_model, mcfg.n_layers, mcfg.variant,
                                   mcfg.embedding_size, mcfg.mlp_hidden)
    # Below ~5M parameters the batch formula rounds to 0; the smallest ladder batch is 32.
    c.train.batch_size = max(32, sizes.batch_size_formula(n))
  for f in model_fields():
    setattr(m, f, getattr(mcfg, f))
  return config_lib.resolve(c), size


def model_flags(cfg, size: str) -> list[str]:
  """Command-line overrides that make the trainer build this model."""
  m = cfg.model
  out = [f"--config.model.size={size}"]
  if size == "custom":
    out += [f"--config.model.d_model={m.d_model}", f"--config.model.n_heads={m.n_heads}",
            f"--config.model.n_layers={m.n_layers}"]
  out += [f"--config.model.{f}={getattr(m, f)}" for f in model_fields()]
  return out


def convert(hf_dir: str, output: str, print_fn=print) -> str:
  """Writes OUTPUT/checkpoints/0 (params only); returns the step directory."""
  from olmo_jax import checkpoint, hf_import
  from olmo_jax import config as config_lib
  mcfg, params = hf_import.import_hf(hf_dir)
  cfg, size = train_config_for(mcfg)
  meta = {"config": config_lib.to_dict(cfg), "tokenizer_hash": None,
          "source": os.path.abspath(hf_dir)}
  step_dir = checkpoint.write_params_checkpoint(output, params, meta)
  print_fn(f"wrote {step_dir} from {hf_dir} ({mcfg.variant}, d_model={mcfg.d_model}, "
           f"{mcfg.n_layers} layers)")
  print_fn("continue training with: python -m olmo_jax.train --workdir " + output + " " +
           " ".join(model_flags(cfg, size)))
  return step_dir


def main(argv=None) -> int:
  runtime.init()  # first, before JAX loads: a host without accelerators runs on its CPU
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--hf", required=True, help="HF model directory (config.json + weights)")
  p.add_argument("--output", required=True, help="workdir to create (must hold no checkpoints)")
  a = p.parse_args(argv)
  from olmo_jax import checkpoint, hf, paths
  try:
    if paths.is_remote(a.hf):
      raise ValueError(f"--hf {a.hf}: read the HF directory from a local path (gcloud storage "
                       "cp -r gs://... DIR first)")
    paths.check_bucket(a.output, "--output")  # a gs:// workdir: bucket and endpoint, at once
    convert(a.hf, a.output)
  except (checkpoint.CheckpointError, hf.ConversionError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
