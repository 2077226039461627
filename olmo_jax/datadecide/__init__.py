"""DataDecide: choose pretraining data from small proxy runs.

`python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/dd` runs a
study (study.py); `python -m olmo_jax.datadecide report --results TABLE --target SIZE
--output DIR` analyses any results table (results.py, analysis.py, report.py). The results
table, the analysis and the report never import JAX, so they run anywhere pandas does.
"""
