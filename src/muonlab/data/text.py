"""Token streams for language-model training, and a checkpointable batch sampler.

Sources (``load_text``):

* ``"tinyshakespeare"`` (default): the bundled tinyshakespeare (Karpathy's char-rnn data,
  1.1 MB), package data ``muonkit/data/tinyshakespeare.txt``.
* a text file path: tokenized whole, split into the first 90 % for training and the last 10 %
  for validation (nanoGPT's ``data/shakespeare_char/prepare.py``).
* a directory with ``train.bin`` and ``val.bin``: pre-tokenized flat uint16 arrays, read as
  ``np.memmap`` (nanoGPT's OpenWebText format); a ``meta.json`` beside them may give
  ``vocab_size`` (and ``itos`` for char data; nanoGPT's ``meta.pkl`` is read too, as plain
  data), else GPT-2's vocabulary padded to 50304. Every token id is checked against the
  vocabulary when the directory is read, before a run writes anything.

Tokenizers: ``"char"`` (one id per distinct character, sorted, as nanoGPT's char runs),
``"byte"`` (the UTF-8 bytes, 256 ids: one vocabulary for any text, so a model pretrained on one
corpus reads another, e.g. a fine-tuning task) or ``"gpt2"`` (GPT-2 BPE through the
``tiktoken`` package; its encoding files must already be in tiktoken's cache: nothing here
downloads).

``TokenBatches`` draws ``batch_size`` random windows of ``block_size + 1`` tokens per call
(nanoGPT's ``get_batch``) from its own ``torch.Generator``, whose state is in
``state_dict()`` so a resumed run draws the same batches it would have drawn.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

BUNDLED = "tinyshakespeare"
MANIFEST = "manifest.json"  # a corpus of muonlab.data.corpus: its files, sizes and sha256
TOKEN_SPLITS = ("train", "val")
TOKENIZERS = ("char", "byte", "gpt2")
BYTE_VOCAB = 256
GPT2_PADDED_VOCAB = 50304  # 50257 rounded up to a multiple of 64, as nanoGPT
# The files tiktoken fetches for the "gpt2" encoding; its cache names each by the sha1 of its URL.
GPT2_ENCODING_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)


@dataclass
class TokenData:
    """Train and val token arrays (1-D numpy, uint16/uint32 or memmap) and how to read them."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer: str
    source: str
    itos: list[str] | None = field(default=None, repr=False)
    corpus_sha256: str | None = None  # a built corpus's (its manifest's, checked on reading)

    def encode(self, text: str) -> list[int]:
        """``text``'s token ids in this data's vocabulary (e.g. a task prompt for the model)."""
        if self.itos is not None:
            return char_encode(text, self.itos).tolist()
        if self.tokenizer == "byte":
            return byte_encode(text).tolist()
        if self.tokenizer == "gpt2":
            return gpt2_encode(text).tolist()
        raise ValueError(f"no encoder for tokenizer {self.tokenizer!r} of {self.source}")

    def decode(self, ids) -> str:
        """Token ids back to text (char vocabularies, bytes and GPT-2 BPE)."""
        self.check_decodable()
        ids = [int(i) for i in ids]
        if self.itos is not None:
            return "".join(self.itos[i] for i in ids)
        if self.tokenizer == "byte":
            return byte_decode(ids)
        return gpt2_encoding().decode(ids)

    def check_decodable(self) -> None:
        """Refuse now, not after a run has trained, data whose sampled ids :meth:`decode`
        could not turn into text: no ``itos`` for char data, an ``itos`` shorter than the
        vocabulary, GPT-2 BPE without tiktoken's cached files."""
        if self.itos is not None:
            if len(self.itos) < self.vocab_size:
                raise ValueError(
                    f"{self.source}: itos has {len(self.itos)} entries for a vocabulary of "
                    f"{self.vocab_size}, so sampled ids past it have no text; fix meta.json or "
                    "leave out --sample"
                )
        elif self.tokenizer == "gpt2":
            gpt2_encoding()
        elif self.tokenizer != "byte":
            raise ValueError(f"{self.source}: {self.tokenizer} data without itos in meta.json "
                             "cannot be decoded; add itos or leave out --sample")

    def describe(self) -> dict:
        """What a run records of its data: where from, the vocabulary, the sizes, and
        ``token_hash`` (:func:`token_hash`), by which a resume knows the data is the run's, and
        for a built corpus its ``corpus_sha256`` (that of its manifest, which the files
        matched when read)."""
        described = dict(
            source=self.source,
            tokenizer=self.tokenizer,
            vocab_size=self.vocab_size,
            train_tokens=len(self.train),
            val_tokens=len(self.val),
            token_hash=token_hash(self.train, self.val),
        )
        if self.corpus_sha256 is not None:
            described["corpus_sha256"] = self.corpus_sha256
        return described


def token_hash(*splits: np.ndarray, chunk: int = 1 << 22) -> str:
    """The first 16 hex digits of the SHA-256 of the token ids of ``splits``, each as its
    length then its ids in little-endian uint32 (whatever the array's dtype: the same tokens
    from a text file or a .bin memmap hash alike), read ``chunk`` ids at a time."""
    digest = hashlib.sha256()
    for tokens in splits:
        digest.update(len(tokens).to_bytes(8, "little"))
        for start in range(0, len(tokens), chunk):
            digest.update(np.ascontiguousarray(tokens[start:start + chunk], dtype="<u4"))
    return digest.hexdigest()[:16]


def bundled_text() -> str:
    """The bundled tinyshakespeare text."""
    return (importlib.resources.files("muonlab") / "data" / "tinyshakespeare.txt").read_text(
        encoding="utf-8"
    )


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """First ``1 - val_fraction`` of the stream for training, the rest for validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:n], tokens[n:]


def char_vocab(text: str) -> list[str]:
    return sorted(set(text))


def char_encode(text: str, itos: list[str]) -> np.ndarray:
    """Ids of ``text``'s characters in vocabulary ``itos`` (uint16, uint32 past 65536 chars)."""
    stoi = {c: i for i, c in enumerate(itos)}
    dtype = np.uint16 if len(itos) <= 2**16 else np.uint32
    try:
        return np.array([stoi[c] for c in text], dtype=dtype)
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None


def byte_encode(text: str) -> np.ndarray:
    """The UTF-8 bytes of ``text`` as ids 0..255 (uint16, the dtype of the .bin files)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)


def byte_decode(ids) -> str:
    """Byte ids back to text; a byte sequence that is not UTF-8 (a model's cut or invalid
    output) becomes U+FFFD rather than an error."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def tiktoken_cache_dir() -> Path:
    """Where tiktoken looks for cached encoding files (its TIKTOKEN_CACHE_DIR rule)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def gpt2_encoding():
    """tiktoken's GPT-2 encoding, from its local cache only; a clear error if it cannot be."""
    try:
        import tiktoken
    except ImportError:
        raise ImportError(
            "GPT-2 BPE (--tokenizer gpt2, or token data without a meta.json) needs the "
            "tiktoken package to encode or decode text: pip install 'muonkit[bpe]' (or pip "
            "install tiktoken)"
        ) from None
    cache = tiktoken_cache_dir()
    missing = [
        url
        for url in GPT2_ENCODING_URLS
        if not (cache / hashlib.sha1(url.encode()).hexdigest()).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"tiktoken's GPT-2 encoding files are not in its cache {cache} (missing: "
            f"{', '.join(u.rsplit('/', 1)[1] for u in missing)}); muonkit never downloads. "
            "On a machine with internet run: python -c \"import tiktoken; "
            "tiktoken.get_encoding('gpt2')\" and copy that cache here (point TIKTOKEN_CACHE_DIR "
            "at it), or pre-tokenize to train.bin/val.bin and pass that directory"
        )
    return tiktoken.get_encoding("gpt2")


def gpt2_encode(text: str) -> np.ndarray:
    ids = gpt2_encoding().encode_ordinary(text)
    return np.array(ids, dtype=np.uint16)


def load_text(
    source: str | os.PathLike = BUNDLED, tokenizer: str = "char", val_fraction: float = 0.1
) -> TokenData:
    """Tokens of ``source``: the bundled tinyshakespeare, a text file, or a .bin directory."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; valid: {list(TOKENIZERS)}")
    if str(source) == BUNDLED:
        text, name = bundled_text(), BUNDLED
    else:
        path = Path(source)
        if path.is_dir():
            return load_bin_dir(path)
        if not path.exists():
            raise FileNotFoundError(
                f"data file {path} does not exist. Pass a UTF-8 text file, a directory with "
                f"train.bin and val.bin (make them with muonlab.data.text.prepare_bin or "
                f"nanoGPT's data/*/prepare.py), or '{BUNDLED}' for the bundled text"
            )
        text, name = read_text_file(path), str(path)
    if tokenizer == "char":
        itos = char_vocab(text)
        train, val = split_tokens(char_encode(text, itos), val_fraction)
        return TokenData(train, val, len(itos), "char", name, itos)
    if tokenizer == "byte":
        train, val = split_tokens(byte_encode(text), val_fraction)
        return TokenData(train, val, BYTE_VOCAB, "byte", name)
    train, val = split_tokens(gpt2_encode(text), val_fraction)
    return TokenData(train, val, GPT2_PADDED_VOCAB, "gpt2", name)


def read_text_file(path: Path) -> str:
    """The UTF-8 text of ``path``; ValueError naming the file if it is empty or not text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"data file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}); pass a text file, or a directory with train.bin and val.bin for "
            "pre-tokenized data"
        ) from None
    if not text:
        raise ValueError(f"data file {path} is empty")
    if "\x00" in text:  # e.g. a .bin of uint16 ids below 128: valid UTF-8, yet not text
        raise ValueError(
            f"data file {path} holds NUL bytes (offset {text.index(chr(0))}): it is binary, not "
            "text; for token ids (uint16) pass the directory holding train.bin and val.bin "
            f"(e.g. --data {path.parent}), else a UTF-8 text file"
        )
    return text


def load_bin_dir(path: str | os.PathLike) -> TokenData:
    """``train.bin``/``val.bin`` (flat uint16) in ``path`` as memmaps, with the vocabulary of
    :func:`read_meta`; every token id is checked against it (:func:`check_token_ids`); a built
    corpus's files are checked against its manifest (:func:`read_manifest`)."""
    path = Path(path)
    arrays = {split: read_token_file(path, split) for split in TOKEN_SPLITS}
    meta, vocab_from = read_meta(path)
    vocab = meta.get("vocab_size", GPT2_PADDED_VOCAB)
    for split, tokens in arrays.items():
        check_token_ids(tokens, vocab, path / f"{split}.bin", vocab_from)
    tokenizer = meta.get("tokenizer", "gpt2")
    manifest = read_manifest(path)
    return TokenData(arrays["train"], arrays["val"], vocab, tokenizer, str(path), meta.get("itos"),
                     corpus_sha256=None if manifest is None else manifest["sha256"])


def sha256_of_files(paths) -> str:
    """The SHA-256 (hex) of the files ``paths`` read one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict | None:
    """The manifest of the corpus built in ``directory`` (:mod:`muonlab.data.corpus`; None: no
    manifest, e.g. nanoGPT's files), after checking that its ``sha256`` is that of
    ``train.bin`` followed by ``val.bin``: a corpus whose files changed since it was built is
    refused, so a run records the hash of the tokens it read."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        recorded = manifest["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a corpus manifest ({e})") from None
    actual = sha256_of_files(directory / f"{split}.bin" for split in TOKEN_SPLITS)
    if actual != recorded:
        raise ValueError(f"{directory}: train.bin/val.bin (sha256 {actual[:16]}...) are not "
                         f"the files its {MANIFEST} describes ({str(recorded)[:16]}...); rebuild "
                         "it with muonkit data build-corpus --overwrite")
    return manifest


def read_token_file(path: Path, split: str) -> np.ndarray:
    """``path/{split}.bin`` as a uint16 memmap; a missing, empty or odd-sized file refused."""
    f = path / f"{split}.bin"
    if not f.exists():
        raise FileNotFoundError(
            f"{f} does not exist: a token directory needs train.bin and val.bin (flat "
            "uint16 token ids). Make them with muonlab.data.text.prepare_bin(text_file, "
            f"{str(path)!r}) or nanoGPT's data/openwebtext/prepare.py"
        )
    size = f.stat().st_size
    if size < 2:
        raise ValueError(f"token file {f} is empty")
    if size % 2:
        raise ValueError(f"token file {f} has {size} bytes, an odd number: uint16 ids take 2 "
                         "bytes each, so it is cut short or not a uint16 token file")
    return np.memmap(f, dtype=np.uint16, mode="r")


class PlainUnpickler(pickle.Unpickler):
    """Reads pickles of plain data only (dicts, lists, strings, numbers): a pickle that names a
    class or function, which could run code, is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}, not plain data")


def read_meta(path: Path) -> tuple[dict, str]:
    """The checked ``vocab_size``, ``tokenizer`` and ``itos`` of the token directory ``path``
    (those given) from its ``meta.json``, else nanoGPT's ``meta.pkl`` (itos a dict of id ->
    character there), else none; and where the vocabulary size comes from, for messages."""
    json_file, pkl_file = path / "meta.json", path / "meta.pkl"
    if json_file.exists():
        meta_file = json_file
        try:
            meta = json.loads(json_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{json_file} is not valid JSON ({e})") from None
    elif pkl_file.exists():
        meta_file = pkl_file
        try:
            with pkl_file.open("rb") as f:
                meta = PlainUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ValueError(f"{pkl_file} cannot be read: {e}") from None
        if isinstance(meta, dict) and isinstance(meta.get("itos"), dict):
            itos = meta["itos"]
            meta = {"tokenizer": "char", **meta, "itos": [itos.get(i) for i in range(len(itos))]}
    else:
        return {}, f"GPT-2's padded vocabulary: {path} has no meta.json"
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file} must hold a mapping (vocab_size, tokenizer, itos), got "
                         f"{type(meta).__name__}")
    meta = {k: meta[k] for k in ("vocab_size", "tokenizer", "itos") if k in meta}
    vocab = meta.get("vocab_size", GPT2_PADDED_VOCAB)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ValueError(f"{meta_file}: vocab_size must be an integer >= 1, got {vocab!r}")
    if meta.get("tokenizer", "char") not in TOKENIZERS:
        raise ValueError(f"{meta_file}: tokenizer must be one of {list(TOKENIZERS)}, got "
                         f"{meta['tokenizer']!r}")
    itos = meta.get("itos")
    if itos is not None and not (isinstance(itos, list) and all(isinstance(c, str) for c in itos)):
        raise ValueError(f"{meta_file}: itos must list the text of each id 0, 1, ... in order")
    source = (f"vocab_size in {meta_file}" if "vocab_size" in meta
              else f"GPT-2's padded vocabulary: {meta_file} gives no vocab_size")
    return meta, source


def check_token_ids(
    tokens: np.ndarray, vocab_size: int, source: Path, vocab_from: str = "",
    chunk: int = 1 << 24,
) -> None:
    """Refuse a token file holding an id >= ``vocab_size`` (the model's embedding would fail
    mid-run), naming the file, the first such id, its position and the vocabulary size (and
    ``vocab_from``, where that size comes from). Reads the file once, ``chunk`` ids at a time:
    a vectorized max per chunk, the position only in a chunk that holds a bad id."""
    for start in range(0, len(tokens), chunk):
        part = np.asarray(tokens[start:start + chunk])
        if part.size == 0 or int(part.max()) < vocab_size:
            continue
        at = start + int(np.argmax(part >= vocab_size))
        raise ValueError(
            f"{source}: token id {int(tokens[at])} at position {at} is outside the "
            f"vocabulary of size {vocab_size}" + (f" ({vocab_from})" if vocab_from else "")
        )


def prepare_bin(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str = "char",
    val_fraction: float = 0.1,
) -> Path:
    """Tokenize ``source`` (see :func:`load_text`) into ``out_dir``/{train,val}.bin + meta.json."""
    data = load_text(source, tokenizer, val_fraction)
    if data.vocab_size > 2**16:
        raise ValueError(f"vocab_size {data.vocab_size} does not fit the uint16 .bin format")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data.train.astype(np.uint16).tofile(out / "train.bin")
    data.val.astype(np.uint16).tofile(out / "val.bin")
    meta = dict(vocab_size=data.vocab_size, tokenizer=data.tokenizer, source=data.source)
    if data.itos is not None:
        meta["itos"] = data.itos
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def check_fits(tokens: np.ndarray, batch_size: int, block_size: int, split: str) -> None:
    """Refuse batches that cannot be cut from ``tokens`` (windows of block_size + 1)."""
    if batch_size <= 0 or block_size <= 0:
        raise ValueError(f"batch_size and block_size must be > 0, got {batch_size}, {block_size}")
    if batch_size * block_size + 1 > len(tokens):
        raise ValueError(
            f"a batch of --batch-size x --block-size = {batch_size} x {block_size} = "
            f"{batch_size * block_size} tokens is larger than the {len(tokens)} tokens of the "
            f"{split} split; use a smaller --batch-size or --block-size, or more data"
        )


def windows(tokens: np.ndarray, starts: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Inputs ``tokens[s : s+T]`` and targets ``tokens[s+1 : s+T+1]`` (int64) for each start."""
    idx = starts.numpy()[:, None] + np.arange(block_size + 1)
    w = torch.from_numpy(np.asarray(tokens[idx]).astype(np.int64))
    return w[:, :-1], w[:, 1:]


class TokenBatches:
    """Random (x, y) windows of a token array, reproducible and resumable.

    Each ``next_batch()`` draws ``batch_size`` start positions uniformly from
    ``[0, len - block_size)`` with a private ``torch.Generator`` seeded by ``seed``.
    ``state_dict()`` holds the generator state and the number of batches drawn.
    """

    def __init__(
        self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int = 0,
        split: str = "train",
    ):
        check_fits(tokens, batch_size, block_size, split)
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def next_batch(self) -> tuple[Tensor, Tensor]:
        high = len(self.tokens) - self.block_size
        starts = torch.randint(high, (self.batch_size,), generator=self.generator)
        self.batches_drawn += 1
        return windows(self.tokens, starts, self.block_size)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches_drawn = int(state["batches_drawn"])


def fixed_batches(
    tokens: np.ndarray, batch_size: int, block_size: int, num_batches: int, seed: int = 0,
    split: str = "val",
) -> list[tuple[Tensor, Tensor]]:
    """``num_batches`` batches drawn once, so every evaluation sees the same tokens."""
    sampler = TokenBatches(tokens, batch_size, block_size, seed=seed, split=split)
    return [sampler.next_batch() for _ in range(num_batches)]
