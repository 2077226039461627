"""data_pipeline.atomic: a reader sees the old file (or directory) or the whole new one."""

import json
import os

import numpy as np
import pytest

from data_pipeline import atomic


def test_write_atomic_takes_text_bytes_and_array_chunks(tmp_path):
  p = str(tmp_path / "f")
  assert atomic.write_atomic(p, "é\n") == 3
  assert open(p, "rb").read() == "é\n".encode()
  chunks = [np.arange(3, dtype="<u2"), np.array([7], dtype="<u2")]
  assert atomic.write_atomic(p, iter(chunks)) == 8
  assert np.array_equal(np.fromfile(p, dtype="<u2"), [0, 1, 2, 7])
  atomic.write_json(p, {"a": [1]})
  assert open(p).read() == json.dumps({"a": [1]}, indent=1)
  assert os.listdir(tmp_path) == ["f"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  p = str(tmp_path / "f")
  atomic.write_atomic(p, b"old")

  def chunks():
    yield b"new, half"
    raise RuntimeError("source failed")

  with pytest.raises(RuntimeError):
    atomic.write_atomic(p, chunks())
  assert open(p, "rb").read() == b"old"
  assert os.listdir(tmp_path) == ["f"]


def test_replacing_directory_swaps_on_success_and_keeps_the_old_on_failure(tmp_path):
  out = tmp_path / "out"
  with atomic.replacing_directory(str(out)) as d:
    (tmp_path / d / "a").write_text("1")
  with pytest.raises(ValueError):
    with atomic.replacing_directory(str(out)) as d:
      (tmp_path / d / "b").write_text("2")
      raise ValueError("build failed")
  assert sorted(os.listdir(out)) == ["a"]
  with atomic.replacing_directory(str(out)) as d:
    (tmp_path / d / "b").write_text("2")
  assert sorted(os.listdir(out)) == ["b"]
  assert sorted(os.listdir(tmp_path)) == ["out"]
