"""`python -m data_pipeline.inspect_tokens DIR`: what a tokenised source holds, how it was curated.

  python -m data_pipeline.inspect_tokens data/curated/3f2a9c0d1b7e4a55 [--examples 3]

Prints the source's inputs, tokenizer and totals from DIR/index.json; for a curated source, a
table of documents and tokens in / kept / dropped per step with the drop reasons, then a few
kept and dropped documents of each step.

(This command was `python -m data_pipeline.inspect` before; the module was renamed so that it
no longer shadows Python's own `inspect` module. Its arguments are unchanged.)
"""

from __future__ import annotations

import argparse
import os
import sys

from data_pipeline import curation, token_index


def _pct(part: int, whole: int) -> str:
  return f"{100.0 * part / whole:.1f}%" if whole else "-"


def format_table(rows: list[list[str]]) -> str:
  """Left-aligned first column, right-aligned numbers, two spaces between columns."""
  widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
  lines = []
  for k, r in enumerate(rows):
    cells = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]
    lines.append("  ".join(cells).rstrip())
    if k == 0:
      lines.append("  ".join("-" * w for w in widths))
  return "\n".join(lines)


def report(directory: str, examples: int = 3) -> str:
  """The text `python -m data_pipeline.inspect_tokens` prints for one token directory."""
  index = token_index.read_index(directory)
  if index is None:
    raise FileNotFoundError(f"{directory} has no {token_index.INDEX_FILE}; give a directory "
                            "written by `python -m data_pipeline.tokenize_files`")
  out = [f"{directory}: {index.get('documents')} documents, {index.get('tokens')} tokens "
         f"({index.get('dtype')}) in {len(index.get('shards', []))} shards"
         + ("" if index.get("complete", True) else "  [INCOMPLETE: rerun the tokenizer]"),
         f"tokenizer: {index.get('tokenizer')} (sha256 {str(index.get('tokenizer_hash'))[:12]})"]
  inputs = index.get("inputs") or [{"path": s["source"]} for s in index.get("shards", [])]
  out.append(f"inputs ({len(inputs)}): " + ", ".join(i["path"] for i in inputs[:4])
             + (" ..." if len(inputs) > 4 else ""))
  cur = index.get("curation")
  if not cur:
    out.append("curation: none (every document tokenised)")
    return "\n".join(out) + "\n"
  out.append(f"curation: {cur['description']}")
  out.append("")
  rows = [["step", "docs in", "kept", "dropped", "kept %", "tokens in", "kept", "dropped",
           "kept %", "seconds"]]
  for r in cur["steps"]:
    rows.append([r["step"], str(r["documents_in"]), str(r["documents_kept"]),
                 str(r["documents_dropped"]), _pct(r["documents_kept"], r["documents_in"]),
                 str(r["tokens_in"]), str(r["tokens_kept"]), str(r["tokens_dropped"]),
                 _pct(r["tokens_kept"], r["tokens_in"]), f"{r['seconds']:.2f}"])
  rows.append(["total", str(cur["documents_in"]), str(index["documents"]),
               str(cur["documents_in"] - index["documents"]),
               _pct(index["documents"], cur["documents_in"]), str(cur["tokens_in"]),
               str(index["tokens"]), str(cur["tokens_in"] - index["tokens"]),
               _pct(index["tokens"], cur["tokens_in"]), f"{cur['seconds']:.2f}"])
  out.append(format_table(rows))
  out.append("")
  out.append("drop reasons:")
  for r in cur["steps"]:
    reasons = ", ".join(f"{k} {v['documents']} docs / {v['tokens']} tokens"
                        for k, v in r["reasons"].items()) or "none"
    out.append(f"  {r['step']}: {reasons}")
  if examples > 0:
    for r in cur["steps"]:
      out.append("")
      params = {k: v for k, v in r["params"].items() if v is not None}
      out.append(f"== {curation.describe_chain([{'step': r['step'], **params}])}")
      for ex in r["examples"]["kept"][:examples]:
        out.append(f"  kept     {ex['doc']}: {ex['text']}")
      for ex in r["examples"]["dropped"][:examples]:
        out.append(f"  dropped  {ex['doc']} [{ex['reason']}: {ex['detail']}]: {ex['text']}")
  return "\n".join(out) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m data_pipeline.inspect_tokens", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("directory", help="a token directory (holds index.json)")
  p.add_argument("--examples", type=int, default=3, help="kept/dropped examples per step")
  args = p.parse_args(argv)
  if not os.path.isdir(args.directory):
    print(f"error: {args.directory} is not a directory", file=sys.stderr)
    return 2
  try:
    sys.stdout.write(report(args.directory, args.examples))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
