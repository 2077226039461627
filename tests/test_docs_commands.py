"""The commands printed in README.md and docs/*.md: each runs as printed here, or is listed
below with why it cannot run in a test (data, hardware, a network, more than a minute).

A command added to the docs fails `test_every_documented_command_is_accounted_for` until it is
placed in one of the two tables, so the docs cannot drift from the code unnoticed.
"""

import glob
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

DOCS = ["README.md", *sorted(os.path.relpath(p, REPO)
                             for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
_COMMAND = re.compile(r"^\s*(?:[A-Z_]+=\S+\s+)*(python3?|bash|make|sbatch|\./scripts/|scripts/|"
                      r"lm-eval)\b")

# Run exactly as printed (from a scratch directory that sees the repository's configs and
# benchmarks), each in well under a minute on 2 cores.
RUNS_HERE = {
    "python -m eval.run --list": "suite olmes",
    "python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/dd --plan":
        "plan.txt",
    "python -m olmo_jax.train --config configs/train.py:150M --dry_run": "compiled in",
}
# Exit codes other than 0 that a command may end with here: a plan of the devices at hand
# that does not fit them ends with 3 (docs/errors.md), as the 150M default does on a small host.
EXIT_CODES = {"python -m olmo_jax.train --config configs/train.py:150M --dry_run": (0, 3)}

# Printed for users, not run here; the reason says why, and where a test covers the same
# command line at a smaller size it names the test.
NOT_RUN = {
    "make demo": "minutes; the demo's own steps are tested (test_train, test_eval_run)",
    "make test": "the suite itself",
    "make datadecide-demo": "~15 minutes of training (test_datadecide_study runs a small study)",
    "python -m olmo_jax.train --config configs/train.py:150M --workdir runs/150M-dolma17 "
    "--config.data.mixture=dolma17 --config.mesh.fsdp=-1": "needs the Dolma 1.7 token files",
    "python -m data_pipeline.tokenize_files --inputs 'raw/*.jsonl.gz' --output data/mysource/":
        "needs the user's raw text (test_data_tokenize runs it on made files)",
    "python -m eval.run --checkpoint runs/150M-dolma17 --tasks olmes --output eval/150M":
        "needs a trained 150M run (test_eval_run scores a tiny one)",
    "python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/dd":
        "trains the demo study (test_datadecide_study)",
    "python scripts/convert_to_hf.py --checkpoint runs/150M-dolma17 --output hf/150M":
        "needs a trained run (test_convert)",
    "bash scripts/launch_distributed.sh 150M 8 data runs/150M --config.data.mixture=dolma17":
        "8 GPUs (test_launch runs the script on fake CPU devices)",
    "python benchmarks/bench_train_gpu.py --device cpu --tiny":
        "over a minute on 2 cores (test_bench_gpu runs the same comparison)",
    "OUT=gpu_results bash benchmarks/gpu_suite.sh": "a GPU machine",
    "python scripts/convert_to_hf.py --checkpoint runs/150M --output hf/150M":
        "needs a trained run (test_convert)",
    "lm-eval run --model hf --model_args pretrained=hf/150M --tasks piqa":
        "downloads the PIQA dataset (test_eval_harness runs lm-eval offline)",
    "python scripts/convert_from_hf.py --hf path/to/hf_model --output runs/from-hf":
        "needs an HF model (test_convert imports made ones)",
    "python -m olmo_jax.train --workdir runs/from-hf <model flags printed by the script>":
        "a template",
    "python -c \"import torch; from safetensors.torch import save_file; ": "needs the user's file",
    "python -m olmo_jax.train --config configs/train.py:1B --workdir gs://": "a bucket (test_gcs)",
    "python -m eval.run --checkpoint gs://": "a bucket (test_gcs)",
    "python scripts/convert_to_hf.py --checkpoint gs://": "a bucket (test_gcs)",
    "python -m olmo_jax.train ... ": "a template (the data flags of any training command)",
    "python -m data_pipeline.tokenize_files --inputs 'raw/*.jsonl.gz' --output data/":
        "needs the user's raw text (test_data_tokenize, test_curation_tokenize)",
    "python -m data_pipeline.tokenize_files --recipe curation_dedup_rules --data_dir data":
        "minutes of curation (test_curation_tokenize runs the shipped recipe, slow)",
    "python -m data_pipeline.inspect_tokens data/curated/<key>": "a template",
    "python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/dd [":
        "a template of the flags",
    "python -m olmo_jax.datadecide report --results runs/dd/results.parquet":
        "needs a study's results (test_datadecide_report runs the CLI on made tables)",
    "python -m olmo_jax.datadecide --config configs/datadecide/curation.py --workdir "
    "runs/dd-curation": "curates and trains (test_datadecide_recipes)",
    "python -m eval.run --checkpoint hf/150M": "needs an HF model (test_eval_run)",
    "python -m eval.run --checkpoint runs/150M-dolma17": "needs a trained run (test_eval_run)",
    "python -m eval.harness --checkpoint runs/150M-dolma17": "needs a trained run and datasets "
                                                             "(test_eval_harness)",
    "python -m olmo_jax.train --workdir runs/2proc --coordinator": "two processes "
                                                                   "(test_distributed)",
    "OLMO_JAX_PLATFORM=cpu bash scripts/launch_distributed.sh 4M 2 data runs/4M":
        "needs token files in ./data (test_launch)",
    "./scripts/olmo/launch_distributed.sh 150M 8 ./data ./outputs":
        "8 devices and a 150M run (test_launch runs it at a tiny size, slow)",
    "python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir /shared/dd "
    "--executor slurm": "a SLURM cluster and GPUs (test_datadecide_slurm submits small studies)",
    "python -m olmo_jax.datadecide status --config configs/datadecide/demo.py --workdir "
    "/shared/dd": "a submitted study (test_datadecide_slurm reads the status of one)",
    "sbatch ": "a SLURM cluster (tests/test_slurm.py submits the script to a private one)",
    "python tests/slurm_cluster.py ": "starts SLURM daemons as root (test_slurm's fixture)",
    "scripts/launch_tpu_pod.sh ": "a TPU pod",
    "python -m olmo_jax.train --config configs/train.py:1B --dry_run --config.plan.platform=":
        "1B compiles take minutes on 2 cores (test_targets compiles small models, slow ones 1B)",
    "python -m olmo_jax.train --model_size 4M --data_path DATA": "needs token files in DATA "
                                                                 "(test_cli)",
    "python -m olmo_jax.train_pack --replica ": "needs the default recipe's token files "
                                                 "(test_pack runs packs of tiny models)",
    "python -m olmo_jax.train_pack --replicas_from plan.txt": "needs a study's plan.txt "
                                                              "(test_datadecide_packing)",
    "python scripts/olmo/train.py --model_size 150M --data_path ./data --output_dir ./outputs":
        "needs token files in ./data (test_cli runs it at a tiny size)",
}


def documented_commands() -> list[tuple[str, str]]:
  """(doc file, command) of every command line in a code block, continuations joined and
  trailing comments removed."""
  out = []
  for doc in DOCS:
    lines = open(os.path.join(REPO, doc)).read().split("\n")
    fenced, i = False, 0
    while i < len(lines):
      line = lines[i]
      if line.strip().startswith("```"):
        fenced = not fenced
      elif (fenced or line.startswith("    ")) and _COMMAND.match(line):
        cmd = line.strip()
        while cmd.endswith("\\") and i + 1 < len(lines):
          i += 1
          cmd = cmd[:-1].rstrip() + " " + lines[i].strip()
        out.append((doc, re.sub(r"\s+#\s.*$", "", cmd).rstrip(" &")))
      i += 1
  return out


def _classified(cmd: str) -> bool:
  return cmd in RUNS_HERE or any(cmd.startswith(prefix) for prefix in NOT_RUN)


def test_every_documented_command_is_accounted_for():
  cmds = documented_commands()
  assert len(cmds) > 30  # the parser still finds the docs' commands
  missing = [f"{doc}: {cmd}" for doc, cmd in cmds if not _classified(cmd)]
  assert not missing, "commands in the docs that no table here accounts for:\n" + "\n".join(
      missing)
  printed = {cmd for _, cmd in cmds}
  stale = [c for c in RUNS_HERE if c not in printed]
  stale += [p for p in NOT_RUN if not any(c.startswith(p) for c in printed)]
  assert not stale, f"entries for commands no longer in the docs: {stale}"


@pytest.mark.parametrize("cmd", sorted(RUNS_HERE))
def test_documented_command_runs_as_printed(cmd, tmp_path, cli_env):
  for name in ("configs", "benchmarks"):
    os.symlink(os.path.join(REPO, name), tmp_path / name)
  env = dict(cli_env, PATH=os.path.dirname(sys.executable) + os.pathsep + cli_env["PATH"])
  r = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode in EXIT_CODES.get(cmd, (0,)), r.stderr[-3000:]
  assert RUNS_HERE[cmd] in r.stdout + r.stderr
