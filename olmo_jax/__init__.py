"""olmo-jax: OLMo training in JAX/Flax NNX with the DataDecide workflow."""

from olmo_jax import targets as _targets

_targets.default_to_cpu()  # before JAX picks a backend: a CPU host stays a plain CPU host
