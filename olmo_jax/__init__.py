"""olmo-jax: OLMo training in JAX/Flax NNX with the DataDecide workflow."""
