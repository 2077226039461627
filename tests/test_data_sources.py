"""Sources: OLMo token-file windows, document formats, and the errors bad input gets."""

import gzip
import json

import grain
import numpy as np
import pytest

from data_pipeline import document_sources, index_shuffle, sources
from data_pipeline import tokenizer as tokenizer_lib


def write_tokens(path, ids, dtype="uint16", header=False):
  """A token file: raw ids (OLMo layout) or an .npy with header."""
  arr = np.asarray(ids, dtype=dtype)
  if header:
    np.save(path, arr)
  else:
    arr.tofile(path)
  return str(path)


def reference_windows(arrays, window):
  """What a plain numpy loop cuts: per file, consecutive windows, the short tail dropped."""
  rows = []
  for a in arrays:
    for i in range(len(a) // window):
      rows.append(a[i * window:(i + 1) * window])
  return np.stack(rows).astype(np.int32)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
@pytest.mark.parametrize("header", [False, True])
def test_token_windows_match_numpy_reference(tmp_path, dtype, header):
  rng = np.random.default_rng(0)
  hi = 50279 if dtype == "uint16" else 100_000
  # Lengths chosen so files end mid-window (tails) and one file is shorter than a window.
  arrays = [rng.integers(0, hi, n) for n in (23, 7, 40, 16)]
  paths = [write_tokens(tmp_path / f"part-{i}.npy", a, dtype, header)
           for i, a in enumerate(arrays)]
  src = sources.TokenFileSource(paths, window=8, dtype=dtype)
  ref = reference_windows(arrays, 8)
  assert len(src) == len(ref) == 2 + 0 + 5 + 2
  np.testing.assert_array_equal(src.read(np.arange(len(src))), ref)
  np.testing.assert_array_equal(src[len(src) - 1], ref[-1])
  order = rng.permutation(len(src))
  np.testing.assert_array_equal(src.read(order), ref[order])


def test_token_source_is_a_grain_data_source(tmp_path):
  ids = np.arange(100) % 50
  src = sources.TokenFileSource([write_tokens(tmp_path / "a.npy", ids)], window=10)
  ds = grain.MapDataset.source(src).batch(3)
  np.testing.assert_array_equal(ds[1], ids[30:60].reshape(3, 10))


def test_permutation_is_a_bijection_and_seeded():
  for n in (1, 2, 5, 64, 1000, 4097):
    p = index_shuffle.permute(np.arange(n), n, seed=7)
    assert sorted(p.tolist()) == list(range(n))
  a = index_shuffle.permute(np.arange(1000), 1000, 1)
  assert not np.array_equal(a, index_shuffle.permute(np.arange(1000), 1000, 2))
  np.testing.assert_array_equal(a, index_shuffle.permute(np.arange(1000), 1000, 1))
  big = 3 * 10**9  # no n-sized table: indexes into a corpus of billions of windows
  got = index_shuffle.permute(np.array([0, big - 1]), big, 3)
  assert got.min() >= 0 and got.max() < big


def test_token_file_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.npy"):
    sources.TokenFileSource([str(tmp_path / "missing.npy")], window=4)
  empty = tmp_path / "empty.npy"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match="empty.*empty.npy"):
    sources.TokenFileSource([str(empty)], window=4)
  odd = tmp_path / "odd.npy"
  odd.write_bytes(b"\x01\x00\x02\x00\x03")
  with pytest.raises(ValueError, match="odd.npy.*not a multiple of uint16"):
    sources.TokenFileSource([str(odd)], window=2)
  short = write_tokens(tmp_path / "short.npy", [1, 2, 3])
  with pytest.raises(ValueError, match="fewer than one window"):
    sources.TokenFileSource([short], window=4)


def test_token_ids_beyond_vocab_are_an_error(tmp_path):
  path = write_tokens(tmp_path / "big.npy", [1, 2, 3, 4, 5, 60000, 7, 8], "uint16")
  src = sources.TokenFileSource([path], window=4, vocab_size=50280)
  np.testing.assert_array_equal(src[0], [1, 2, 3, 4])
  with pytest.raises(ValueError, match=r"60000 >= vocab_size 50280 in .*big.npy"):
    src[1]


def test_resolve_paths_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="source 'x'.*nothing-\\*.npy"):
    sources.resolve_paths("nothing-*.npy", str(tmp_path), "source 'x'")
  (tmp_path / "a.npy").write_bytes(b"\0\0")
  (tmp_path / "a.npy.tmp-123").write_bytes(b"\0")  # an in-flight shard is never read
  assert sources.resolve_paths("*.npy*", str(tmp_path), "s") == [str(tmp_path / "a.npy")]


def _docs_files(tmp_path, docs):
  """The same documents as .jsonl, .jsonl.gz, .jsonl.zst and .parquet."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard
  lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
  out = {}
  out["jsonl"] = tmp_path / "d.jsonl"
  out["jsonl"].write_bytes(lines + b"\n")  # a trailing blank line is not a document
  out["gz"] = tmp_path / "d.jsonl.gz"
  out["gz"].write_bytes(gzip.compress(lines))
  out["zst"] = tmp_path / "d.jsonl.zst"
  out["zst"].write_bytes(zstandard.ZstdCompressor().compress(lines))
  out["parquet"] = tmp_path / "d.parquet"
  pq.write_table(pa.table({"text": docs}), out["parquet"])
  return {k: str(v) for k, v in out.items()}


DOCS = ["Hello world.", "", "Second document, with unicode: café ✓", "x" * 50]


@pytest.mark.parametrize("fmt", ["jsonl", "gz", "zst", "parquet"])
def test_document_formats_read_the_same_documents(tmp_path, fmt):
  path = _docs_files(tmp_path, DOCS)[fmt]
  assert sources.read_documents(path) == DOCS
  assert len(document_sources.DocumentSource([path])) == len(DOCS)


def test_bad_document_files_raise_naming_the_file(tmp_path):
  files = _docs_files(tmp_path, DOCS)
  cut = tmp_path / "cut.jsonl.gz"
  data = open(files["gz"], "rb").read()
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="cut.jsonl.gz: truncated or corrupt gzip"):
    document_sources.DocumentSource([str(cut)])
  cutz = tmp_path / "cut.jsonl.zst"
  data = open(files["zst"], "rb").read()
  cutz.write_bytes(data[:len(data) - 5])
  with pytest.raises(ValueError, match="cut.jsonl.zst: truncated zstd"):
    sources.read_documents(str(cutz))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
  with pytest.raises(ValueError, match="bad.jsonl:2: expected an object with a string 'text'"):
    sources.read_documents(str(bad))
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty.*empty.jsonl"):
    sources.read_documents(str(empty))
  blank = tmp_path / "blank.jsonl"
  blank.write_text("\n\n")
  with pytest.raises(ValueError, match="no documents: .*blank.jsonl"):
    sources.read_documents(str(blank))


def _packed_reference(docs, window):
  tok = tokenizer_lib.load_tokenizer()
  stream = np.concatenate([tok.encode(d, add_special_tokens=False).ids + [50279] for d in docs])
  return stream[:len(stream) // window * window].reshape(-1, window)


def test_packed_stream_is_tokens_plus_eos_concatenated_and_split(tmp_path):
  docs = [f"Document number {i} says something {'long ' * (i % 7)}." for i in range(40)]
  path = _docs_files(tmp_path, docs)["gz"]
  tok = tokenizer_lib.load_tokenizer()
  flat = np.concatenate([tok.encode(d, add_special_tokens=False).ids + [50279] for d in docs])
  ref = _packed_reference(docs, 16)
  stream = document_sources.PackedStream(document_sources.DocumentSource([path]), window=16,
                                         seed=0, shuffle=False, vocab_size=50280)
  got = np.concatenate([stream.take(3), stream.take(5), stream.take(len(ref) - 8)])
  np.testing.assert_array_equal(got, ref)
  assert stream.get_state()["epoch"] == 0  # the tail shorter than a window is still pending
  # Packing runs on across the epoch boundary: the tail, then epoch 1 (same order unshuffled).
  tail = flat[len(ref) * 16:]
  np.testing.assert_array_equal(stream.take(1)[0], np.concatenate([tail, flat])[:16])
  assert stream.get_state()["epoch"] == 1


def test_packed_stream_shards_documents_by_process(tmp_path):
  docs = [f"doc {i}" for i in range(9)]
  path = _docs_files(tmp_path, docs)["jsonl"]
  seen = []
  for pi in range(2):
    s = document_sources.PackedStream(document_sources.DocumentSource([path]), window=4,
                                      seed=3, shuffle=True, process_index=pi, process_count=2)
    seen.append({s._doc_id(0, p) for p in range(s.docs_per_epoch)})  # pylint: disable=protected-access
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {(0, j) for j in range(9)}


def test_array_record_documents(tmp_path):
  from array_record.python import array_record_module
  path = str(tmp_path / "docs.array_record")
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  toks = [np.array([5, 6, 7], np.uint16), np.array([8, 9], np.uint16)]
  for t in toks:
    writer.write(t.tobytes())
  writer.close()
  src = document_sources.DocumentSource([path], record_format="tokens_uint16")
  assert len(src) == 2
  stream = document_sources.PackedStream(src, window=3, seed=0, shuffle=False)
  np.testing.assert_array_equal(stream.take(2), [[5, 6, 7], [50279, 8, 9]])


def test_tfds_prepared_data_source(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  from etils import epath

  class TinyText(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(tmp_path)  # a test module is no package to look metadata up in

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(5):
        yield i, {"text": f"tfds document {i}"}

  builder = TinyText(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  src = document_sources.TfdsDocumentSource("tiny_text", "train", str(tmp_path))
  assert len(src) == 5
  assert sorted(src[i] for i in range(5)) == [f"tfds document {i}" for i in range(5)]
  with pytest.raises(FileNotFoundError, match="'tfds'.*not_there"):
    document_sources.TfdsDocumentSource("not_there", "train", str(tmp_path))


def test_excluded_spans_leave_the_numbering_and_many_files_stay_readable(tmp_path):
  rng = np.random.default_rng(1)
  arrays = [rng.integers(0, 50279, n) for n in (100, 37, 64)]
  paths = [write_tokens(tmp_path / f"p{i}.npy", a) for i, a in enumerate(arrays)]
  exclude = [[(10, 25), (70, 71)], [], [(0, 8), (60, 64)]]
  src = sources.TokenFileSource(paths, window=8, exclude=exclude)
  ref = [a[i * 8:(i + 1) * 8] for f, a in enumerate(arrays) for i in range(len(a) // 8)
         if not any(s < (i + 1) * 8 and i * 8 < e for s, e in exclude[f])]
  np.testing.assert_array_equal(src.read(np.arange(len(src))), np.stack(ref))
  # More files than stay open at once: the file cache closes the oldest and reopens on demand.
  many = [write_tokens(tmp_path / f"m{i}.npy", np.full(4, i)) for i in range(300)]
  src = sources.TokenFileSource(many, window=4)
  order = rng.permutation(300)
  np.testing.assert_array_equal(src.read(np.concatenate([order, order]))[:, 0],
                                np.concatenate([order, order]))
