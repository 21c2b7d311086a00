"""`muonkit data fetch mnist|cifar10`: download, check md5, unpack (:mod:`muonlab.data.fetch`);
`muonkit data build-corpus`: byte tokens of local text files (:mod:`muonlab.data.corpus`)."""

from __future__ import annotations

import shlex
import sys

from ..data import corpus as corpus_module
from ..data import fetch as fetch_module
from .common import POSITIVE_INT, add_command


def build_corpus(args) -> int:
    spec = corpus_module.CorpusSpec(
        out=args.out, sources=args.sources, pattern=args.pattern, max_bytes=args.max_bytes,
        val_every=args.val_every, overwrite=args.overwrite,
        command="muonkit " + shlex.join(getattr(args, "argv", sys.argv[1:])))
    manifest = corpus_module.build_corpus(spec)
    print(f"{args.out}: sha256 {manifest['sha256']} ({manifest['total_bytes']:,} bytes, "
          f"{len(manifest['files'])} files, {manifest['skipped_count']} skipped); train with "
          f"--data {args.out}")
    return 0


def register(subparsers) -> None:
    p = add_command(subparsers, "data", help="dataset utilities (fetch, build-corpus)")
    sub = p.add_subparsers(dest="data_command", required=True)
    f = add_command(sub, "fetch", help="download MNIST or CIFAR-10, verify md5, unpack")
    f.add_argument("dataset", choices=sorted(fetch_module.DATASETS), help="dataset")
    f.add_argument(
        "--data-dir", default=None, help="target directory (None: $MUONKIT_DATA, else ./data)"
    )
    f.set_defaults(func=lambda a: print(fetch_module.fetch(a.dataset, a.data_dir)) or 0)
    b = add_command(sub, "build-corpus", help="byte-token corpus (train.bin/val.bin, manifest) "
                    "of local text files, for --data",
                    description=corpus_module.__doc__.split("\n\n")[0])
    b.add_argument("--from", dest="sources", action="append", default=None, metavar="DIR",
                   help="a directory of text files (repeatable; None: this Python's standard "
                   "library sources, *.py)")
    b.add_argument("--out", required=True, help="directory of the corpus")
    b.add_argument("--pattern", default=None, help="file names to take, e.g. '*.md' (None: "
                   "*.py for the standard library, else every file)")
    b.add_argument("--max-bytes", type=POSITIVE_INT, default=None,
                   help="stop before the file that would pass this many bytes (None: no limit)")
    b.add_argument("--val-every", type=POSITIVE_INT, default=10,
                   help="every n-th file (sorted order) is validation")
    b.add_argument("--overwrite", action="store_true", help="replace a corpus in --out")
    b.set_defaults(func=build_corpus)
