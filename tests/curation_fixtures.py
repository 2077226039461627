"""Documents for the curation tests: prose that passes every rule, and planted bad ones."""

import json

import numpy as np


def _vocabulary(n=400, seed=0):
  rng = np.random.default_rng(seed)
  cons, vow = "bcdfghklmnprstvz", "aeiou"
  out = set()
  while len(out) < n:
    out.add("".join(cons[rng.integers(len(cons))] + vow[rng.integers(len(vow))]
                    for _ in range(int(rng.integers(2, 4)))))
  return sorted(out)


VOCAB = _vocabulary()


def good_doc(seed: int, sentences: int = 8) -> str:
  """Prose that passes every rule: long enough, stop words, punctuated lines, no repetition."""
  rng = np.random.default_rng(seed + 1000)

  def w():
    return VOCAB[rng.integers(len(VOCAB))]

  return "\n".join(f"The {w()} {w()} of the {w()} was {w()} with {w()} and {w()} to {w()} "
                   f"{w()} that {w()} {w()}." for _ in range(sentences))


def edit_one_word(text: str, k: int = 10) -> str:
  words = text.split(" ")
  words[k] = "quixotic"
  return " ".join(words)


def write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return str(path)



BAD = {
    "short": "The cat sat with the dog and that was all.",
    "hashes": " ".join(f"#tag{i} the word{i} and" for i in range(40)),
    "no_stop_words": " ".join(VOCAB[:120]) + ".",
    "long_words": " ".join(["the", "and"] + ["supercalifragilisticexpialidocious"] * 60),
}
