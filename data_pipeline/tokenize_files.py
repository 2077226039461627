"""`python -m data_pipeline.tokenize_files`: documents -> OLMo-format token files + index.json.

  python -m data_pipeline.tokenize_files --inputs 'raw/*.jsonl.gz' --output data/mysource/ \
      [--chain CHAIN.json] [--tokenizer olmo] [--workers N] [--overwrite]
  python -m data_pipeline.tokenize_files --recipe NAME --data_dir data/ [--workers N] [--overwrite]

Each input file becomes one shard `part-NNNNN.npy`: raw little-endian token ids (uint16 when
the vocabulary fits, else uint32), no header, every document followed by EOS, the layout
OLMo/Dolma token files use despite the `.npy` name. With `--chain` (a JSON list of curation
steps, see data_pipeline/curation.py) the shard holds only the documents the chain keeps, and
index.json records documents and tokens in / kept / dropped per step; `--recipe` materialises
every curated source of a recipe once under <data_dir>/curated/<key>/.

Guarantees:
  * The output's index.json names the inputs (path + SHA-256 of their bytes), the tokenizer and
    the chain. A non-empty output whose index does not match is refused unless `--overwrite`,
    which first removes the old shards, sidecars and index (nothing else).
  * A rerun skips exactly the shards whose input bytes are unchanged; a failed run removes its
    temporary files.
  * Bad input (unknown step, threshold out of range, missing score field, unreadable classifier)
    is reported before anything is written: one `error:` line, exit 2.

(This command was `python -m data_pipeline.tokenize` before; the module was renamed so that it
no longer shadows Python's own `tokenize` module. Its flags are unchanged.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from data_pipeline import materialize, tokenization


def _chain_arg(value: str):
  """--chain: a JSON file or inline JSON."""
  if os.path.isfile(value):
    with open(value) as f:
      value = f.read()
  return value


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m data_pipeline.tokenize_files",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--inputs", nargs="+",
                 help="globs of .jsonl/.jsonl.gz/.jsonl.zst/.parquet files (quote them)")
  p.add_argument("--output", help="output directory of part-NNNNN.npy shards")
  p.add_argument("--chain", help="curation chain: a JSON file or inline JSON list of "
                 "{\"step\": NAME, ...}")
  p.add_argument("--field", default="text", help="the text field of the documents (--chain)")
  p.add_argument("--recipe", help="tokenise the curated sources of this data recipe")
  p.add_argument("--data_dir", default="data", help="root of the recipe's paths (--recipe)")
  p.add_argument("--recipes_dir", default="",
                 help="where recipe files live (--recipe); default configs/data_configs")
  p.add_argument("--tokenizer", default=None,
                 help="'olmo' (default) or a tokenizer.json path; a recipe names its own")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="parallel processes (one input file each; per-document rules with --chain)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an output that holds another tokenization (removes its shards)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  if args.recipe and (args.inputs or args.output or args.chain or args.tokenizer):
    p.error("--recipe takes its inputs, outputs, chains and tokenizer from the recipe; drop "
            "--inputs/--output/--chain/--tokenizer")
  if not args.recipe and not (args.inputs and args.output):
    p.error("give --inputs and --output (or --recipe)")
  try:
    if args.recipe:
      indexes = materialize.materialize_recipe(args.recipe, args.data_dir, args.workers,
                                               args.overwrite, args.recipes_dir)
      for name, (output, index) in indexes.items():
        print(f"{name}: {index['documents']} documents, {index['tokens']} tokens "
              f"({index['curation']['description']}) -> {output}")
      return 0
    chain = _chain_arg(args.chain) if args.chain is not None else None
    index = tokenization.run(args.inputs, args.output, args.tokenizer or "olmo", args.workers,
                             chain=chain, overwrite=args.overwrite, field=args.field)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{index['documents']} documents, {index['tokens']} tokens in "
        f"{len(index['shards'])} shards ({index['dtype']}) -> {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
