"""DataDecide: choose pretraining data from small proxy runs.

`python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/dd` runs a
study (study.py); `python -m olmo_jax.datadecide report --results TABLE --target SIZE
--output DIR` analyses any results table (results.py, then report.py). The results
table, the analysis and the report never import JAX, so they run anywhere pandas does.

The analysis is pure functions over a results table (results.py), no JAX: scores.py (run and
target scores, rankings, the macro task), decisions.py (decision accuracy, frontier, rank
agreement), noise.py (signal to noise), fits.py (curve fits) and scaling.py (DataDecide's
scaling-law setups).

Definitions (after the DataDecide paper, Magnusson et al. 2025, and its released analysis
code), with the choices the analysis makes explicit:

- A run is one (recipe, size, seed). Its final step is the largest step it has any row for.
  Its single-scale score for (task, metric) is the value at that final step, or with
  `last_k > 1` the mean over its last k checkpoints (its k largest steps). A run without a
  value at its final step for some (task, metric) is left out of that cell and reported.
- Target scores: at the target size, each recipe's mean over the target seeds of the value at
  each seed's final step.
- Decision accuracy: over every pair of recipes present both in the prediction and at the
  target, the fraction ordered as at the target. The prediction ranks by a proxy metric; the
  target by a target metric: the task's OLMES primary metric ('primary'), the proxy metric
  itself ('same'), or any named metric (DataDecide's cross-metric view: e.g. correct_prob at
  60M against acc_per_char at 1B). Scores are oriented so that higher is better first.
  Ties, `ties='half'` (default): a pair tied at the target has no order to recover and is
  left out (`n_target_ties`); a pair tied in the prediction counts 1/2 (the expected score of
  breaking the tie at random). `ties='datadecide'` (DataDecide's single_scale evaluator,
  binary_accuracy): every pair counts; a tied (abstaining) prediction scores 0 and a pair
  tied at the target scores 1 whenever the prediction decides.
- Protocols: `per_seed` treats each proxy seed as one prediction attempt (mean, population
  std, min, max over seeds; a recipe lacking that seed drops out of that attempt, reported);
  `seed_mean` ranks recipes by their mean over the proxy seeds.
- Rankings order recipes by their seed mean (best first: higher is better unless the metric
  is a loss, bpb or perplexity); tied recipes share the best rank of the tie ("min" ranking).
- Recipes present at some sizes but missing at another, or missing for a (task, metric), are
  never dropped silently: every function appends a line to `warnings` (a list) when given one,
  and the tables carry `n_recipes` and `missing`.
- compute: the FLOPs (6 N tokens, up to the scored step) one prediction of the protocol
  spent: one run for `per_seed`, every seed's run for `seed_mean` (n_runs x one run), the runs
  a scaling law was fitted on (fit_variants: DataDecide's default-seed runs of 150M-750M and
  its no_750M / no_750M_no_530M variants, or every proxy run).
  compute_fraction = compute / one target run's compute at its final step.
- Scaling laws, as DataDecide fits them (SETUPS: its 8 setup names): step 1 fits each
  recipe's loss (a lower-is-better metric, bpb first) against compute, 3-parameter
  L(C) = A / C^alpha + E, 2-parameter A / C^alpha, or 5-parameter A / N^alpha + B / D^beta + E,
  on one point per proxy size: each run's mean over its last 10% of checkpoints by count
  (index min(n-1, ceil(0.9 n)) on), then the mean over the fit seeds (DataDecide: one), at
  the final step's compute; Huber loss (delta 1e-3) on log residuals, L-BFGS-B. Step 2 fits
  each recipe's sigmoid Acc(L) = a / (1 + exp(-k (L - L0))) + b by least squares on its runs'
  last 90% (or 50%) of checkpoints by count (index ceil(0.1 n) on, seed means), with the
  helper point (L = 0, Acc = 1) when asked. 1-step setups fit sigmoid(law) to the metric
  directly. A fit with fewer points than parameters is not made: status 'under-determined',
  left out of decision accuracy. Predictions within TIE_RTOL (relative) are a tie.
- Signal-to-noise at (size, task, metric) (Heineman et al. 2025, without the trend):
  signal = (max - min) / |mean| of the recipes' seed-mean final scores; noise = run-to-run
  variation over the same |mean|: the pooled std of the final scores over seeds where recipes
  have >= 2 seeds, else the late checkpoints' jitter once the learning curve all runs share
  (the mean over runs at each step) and each run's offset are removed; SNR = signal / noise.
- The macro task ('macro'): per run and step, metric 'primary' is the mean over tasks of each
  task's primary metric (the report's default headline), and every metric all tasks have is
  averaged over tasks under its own name (DataDecide's aggregate: the mean before ranking).
- The target's noise ceiling (target_ceiling): the mean over recipe pairs of Phi(|d| / s), d
  the difference of the target means and s its standard error from the target's seeds
  (variance pooled over recipes).
"""

# How decision accuracy treats ties (decisions.pairwise_agreement): 'half' leaves a
# target-tied pair out and scores a tied prediction 1/2; 'datadecide' counts every pair and
# scores a tied prediction 0, as DataDecide's published numbers do. Here, not in decisions.py,
# so the CLI's --help and the study config check need no pandas.
TIES = ("half", "datadecide")
