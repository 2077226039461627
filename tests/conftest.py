"""Shared fixtures: tiny configs and a fast CPU setup."""

import os

# Tests compare float32 numerics; keep XLA from using reduced-precision tricks.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from olmo_jax import runtime  # noqa: E402

runtime.init()  # as the entry points do: before JAX loads, a CPU host stays a CPU host

import pytest  # noqa: E402
import slurm_cluster  # noqa: E402

from data_pipeline import data_plan, materialize  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CONFIG = os.path.join(REPO, "configs", "train.py")


def built_plan(data) -> data_plan.DataPlan:
  """The plan of a data config with its corpora built, as an entry point makes it before it
  reads: resolve, then materialize."""
  plan = data_plan.resolve(data)
  materialize.materialize(plan)
  return plan


@pytest.fixture
def tiny_train_config():
  """The 4M config shrunk to a seconds-long run on the synthetic stream."""
  from olmo_jax.config import load_config_file

  c = load_config_file(TRAIN_CONFIG, "4M")
  c.data.mixture = "synthetic"
  c.train.steps = 20
  c.train.batch_size = 4
  c.train.seq_len = 32
  c.train.warmup_steps = 4
  c.train.log_every = 5
  c.train.progress_bar = False
  c.checkpoint.enabled = False
  return c


# The smallest model that still has heads, layers and a padded vocabulary.
# Command-line flags of a tiny multi-process run (the distributed and SLURM tests).
TINY_RUN_FLAGS = [
    "--config.model.size=custom", "--config.model.d_model=32", "--config.model.n_heads=4",
    "--config.model.n_layers=2", "--config.model.vocab_size=512",
    "--config.model.embedding_size=512", "--config.train.batch_size=8",
    "--config.train.seq_len=32", "--config.train.warmup_steps=2", "--config.train.lr=1e-2",
    "--config.train.log_every=1", "--config.train.progress_bar=False",
]
TINY_MODEL = dict(d_model=32, n_heads=4, n_layers=2, embedding_size=512, vocab_size=500)


@pytest.fixture
def tiny_model_config():
  """ModelConfig(**TINY_MODEL, **overrides): a factory, so a test can vary the dtype."""
  from olmo_jax.model import ModelConfig

  return lambda **overrides: ModelConfig(**{**TINY_MODEL, **overrides})


@pytest.fixture
def train_state():
  """train_state(cfg, tx, seed=0, **kw): a fresh sharded train state on a one-device mesh."""
  from olmo_jax import sharding, trainer

  mesh = sharding.make_mesh()
  return lambda cfg, tx, seed=0, **kw: trainer.init_state(mesh, cfg, tx, seed, **kw)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
  """Environment of a `python -m olmo_jax.train` subprocess: one CPU device, unbuffered,
  with a compilation cache shared by the module's runs."""
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  return dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
              PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
  """A private one-node SLURM cluster (tests/slurm_cluster.py), installed as root where missing,
  started once per session (per xdist worker) and stopped after it; a skip where it cannot be
  had. Clients reach it through `slurm.env` (SLURM_CONF)."""
  reason = slurm_cluster.unavailable_reason()
  if reason:
    pytest.skip(reason)
  cluster = slurm_cluster.start(str(tmp_path_factory.mktemp("slurm")), owner=os.getpid())
  yield cluster
  cluster.stop()
