"""`muonkit data build-corpus`: byte tokens of local text files, deterministic, split by file,
a manifest with every file and the sha256, never overwriting without --overwrite, read by the
training loop, which records the corpus's sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from muonlab.cli import main
from muonlab.data.text import load_text

FAST = ["--preset", "tiny", "--batch-size", "2", "--block-size", "8", "--eval-batches", "1",
        "--eval-every", "0", "--warmup", "1", "--no-progress", "--tracker", "none"]


def make_sources(root: Path) -> tuple[Path, Path]:
    """Two directories: 12 text files (one nested, one without a final newline), a binary,
    a latin-1 file and an empty one, each with a known content."""
    a, b = root / "a", root / "b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    for i in range(10):
        (a / f"f{i:02d}.txt").write_text(f"file {i} of a\n" * (i + 1), encoding="utf-8")
    (a / "sub" / "nested.txt").write_text("nested é\n", encoding="utf-8")
    (b / "last.txt").write_text("no final newline", encoding="utf-8")
    (b / "blob.bin").write_bytes(bytes(range(256)))
    (b / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (b / "empty.txt").write_bytes(b"")
    return a, b


def build(sources, out, *flags) -> int:
    return main(["data", "build-corpus", *[f for s in sources for f in ("--from", str(s))],
                 "--out", str(out), *flags])


def tokens(path: Path) -> bytes:
    """A .bin file's uint16 ids back to bytes."""
    return np.fromfile(path, dtype="<u2").astype(np.uint8).tobytes()


def test_the_corpus_holds_every_text_file_in_sorted_order_split_by_file(tmp_path, capsys):
    a, b = make_sources(tmp_path)
    assert build([a, b], tmp_path / "c", "--val-every", "4") == 0
    texts = [a / f"f{i:02d}.txt" for i in range(10)] + [a / "sub" / "nested.txt", b / "last.txt"]
    contents = [p.read_bytes() for p in texts]
    contents[-1] += b"\n"  # each file ends with a newline in the stream
    # every 4th text file in sorted order (f03, f07, last) is validation, the others training
    val = {3, 7, 11}
    out = tmp_path / "c"
    assert tokens(out / "train.bin") == b"".join(c for i, c in enumerate(contents)
                                                  if i not in val)
    assert tokens(out / "val.bin") == b"".join(contents[i] for i in sorted(val))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == [str(p) for p in texts]
    assert [f["bytes"] for f in manifest["files"]] == [p.stat().st_size for p in texts]
    assert [f["split"] for f in manifest["files"]] == [
        "val" if i in val else "train" for i in range(len(texts))]
    assert manifest["skipped_count"] == 3
    assert {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]} == {
        "blob.bin": "binary (NUL byte)", "latin.txt": "not UTF-8", "empty.txt": "empty"}
    assert manifest["total_bytes"] == sum(map(len, contents))
    both = (out / "train.bin").read_bytes() + (out / "val.bin").read_bytes()
    assert manifest["sha256"] == hashlib.sha256(both).hexdigest()
    assert manifest["file_sha256"]["val.bin"] == hashlib.sha256(
        (out / "val.bin").read_bytes()).hexdigest()
    assert manifest["tokenizer"] == "byte"
    assert manifest["command"].startswith("muonkit data build-corpus --from")
    assert json.loads((out / "meta.json").read_text())["tokenizer"] == "byte"
    assert manifest["sha256"] in capsys.readouterr().out


def test_the_same_files_give_the_same_sha256(tmp_path):
    a, b = make_sources(tmp_path)
    assert build([a, b], tmp_path / "c1") == 0
    assert build([a, b], tmp_path / "c2") == 0
    first, second = (json.loads((tmp_path / c / "manifest.json").read_text())["sha256"]
                     for c in ("c1", "c2"))
    assert first == second
    (a / "f00.txt").write_text("changed\n")
    assert build([a, b], tmp_path / "c3") == 0
    assert json.loads((tmp_path / "c3" / "manifest.json").read_text())["sha256"] != first


def test_max_bytes_stops_before_the_file_that_would_pass_it(tmp_path):
    a, _ = make_sources(tmp_path)
    sizes = [(a / f"f{i:02d}.txt").stat().st_size for i in range(10)]
    limit = sum(sizes[:4]) + sizes[4] - 1  # f04 does not fit
    assert build([a], tmp_path / "c", "--max-bytes", str(limit), "--val-every", "2") == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert [Path(f["path"]).name for f in manifest["files"]] == [f"f{i:02d}.txt"
                                                                  for i in range(4)]
    assert manifest["total_bytes"] == sum(sizes[:4]) and manifest["stopped_at_max_bytes"]


def test_an_existing_corpus_is_refused_unless_overwrite(tmp_path, capsys):
    a, b = make_sources(tmp_path)
    out = tmp_path / "c"
    assert build([a], out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        build([a, b], out)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert build([a, b], out, "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["sources"] == [str(a), str(b)]


@pytest.mark.parametrize("flags, says", [
    (["--from", "{missing}"], "not a directory"),
    (["--from", "{empty}"], "no UTF-8 text files"),
    (["--from", "{a}", "--val-every", "20"], "val split empty"),
])
def test_bad_sources_are_one_line_errors(flags, says, tmp_path, capsys):
    a, _ = make_sources(tmp_path)
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "a": a}
    argv = ["data", "build-corpus", *[f.format(**paths) for f in flags],
            "--out", str(tmp_path / "c")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and says in err, err


def test_the_output_directory_inside_a_source_is_left_out(tmp_path):
    a, _ = make_sources(tmp_path)
    assert build([a], a / "corpus") == 0
    assert build([a], a / "corpus", "--overwrite") == 0  # its own files are not read back
    manifest = json.loads((a / "corpus" / "manifest.json").read_text())
    assert not any("corpus" in Path(f["path"]).parts for f in manifest["files"])


def test_the_default_source_is_the_standard_librarys_python_files(tmp_path):
    out = tmp_path / "c"
    assert build([], out, "--max-bytes", "20000", "--val-every", "2") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pattern"] == "*.py" and manifest["files"]
    assert all(f["path"].endswith(".py") and "site-packages" not in f["path"]
               for f in manifest["files"])


def test_train_reads_the_corpus_and_records_its_sha256(tmp_path):
    a, b = make_sources(tmp_path)
    corpus = tmp_path / "c"
    assert build([a, b], corpus, "--val-every", "3") == 0
    sha = json.loads((corpus / "manifest.json").read_text())["sha256"]
    data = load_text(corpus)
    assert data.tokenizer == "byte" and data.vocab_size == 256
    assert bytes(np.asarray(data.val).astype(np.uint8)) == tokens(corpus / "val.bin")
    run = tmp_path / "run"
    assert main(["train", "--optimizer", "adamw", "--out", str(run), "--data", str(corpus),
                 "--steps", "2", *FAST]) == 0
    config = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["config"]
    assert config["data"]["corpus_sha256"] == sha and config["data"]["vocab_size"] == 256


def test_a_corpus_whose_files_changed_is_refused(tmp_path):
    a, _ = make_sources(tmp_path)
    corpus = tmp_path / "c"
    assert build([a], corpus) == 0
    ids = np.fromfile(corpus / "train.bin", dtype="<u2")
    ids[0] = ord("X")
    ids.tofile(corpus / "train.bin")
    with pytest.raises(ValueError, match="not the files its manifest.json describes"):
        load_text(corpus)
