"""DataDecide: choose pretraining data from small proxy runs.

`python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/dd` runs a
study (study.py); `python -m olmo_jax.datadecide report --results TABLE --target SIZE
--output DIR` analyses any results table (results.py, analysis.py, report.py). The results
table, the analysis and the report never import JAX, so they run anywhere pandas does.
"""

# How decision accuracy treats ties (decisions.pairwise_agreement): 'half' leaves a
# target-tied pair out and scores a tied prediction 1/2; 'datadecide' counts every pair and
# scores a tied prediction 0, as DataDecide's published numbers do. Here, not in decisions.py,
# so the CLI's --help and the study config check need no pandas.
TIES = ("half", "datadecide")
