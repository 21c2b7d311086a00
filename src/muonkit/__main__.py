"""``python -m muonkit``: the command line, which lives in the lab (:mod:`muonlab.cli`; needs
``pip install 'muonkit[lab]'``). Importing :mod:`muonkit` never loads it."""

from muonlab.cli import main

raise SystemExit(main())
