"""muonlab: the lab on top of the muonkit library (the ``lab`` extra: numpy, matplotlib, tqdm).

A nanoGPT-style GPT and an MLP (:mod:`muonlab.models`), data readers with the bundled
tinyshakespeare (:mod:`muonlab.data`), one training loop with checkpoints, provenance and
trackers (:mod:`muonlab.train`), the studies that compare Muon with AdamW
(:mod:`muonlab.experiments`), their reports and figures (:mod:`muonlab.report`), and the
``muonkit`` command line (:mod:`muonlab.cli`). The library, :mod:`muonkit`, never imports it.
"""
