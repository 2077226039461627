"""olmo-jax: OLMo training in JAX/Flax NNX with the DataDecide workflow.

Importing the package changes nothing in the process; the entry points call
`olmo_jax.runtime.init()` (the CPU default on a host without accelerators) first.
"""
