import os
from pathlib import Path

import pytest
import torch

# Processes the tests start (torchrun, spawned ranks, runs in their own process) inherit this:
# on a CPU with native bf16 they would otherwise run "auto" Newton-Schulz in mixed precision
# while the test's own reference (below) runs fp32.
os.environ["MUONKIT_CPU_NATIVE_BF16"] = "0"


@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: intra-op threads gain nothing, and on a busy 2-core machine
    they cost a lot (threads stall at every barrier while another process holds a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_native_bf16(monkeypatch):
    """Every test sees a CPU without native bf16, so ``ns_dtype="auto"`` runs fp32 and results
    are the same on every machine; tests of the other case force it with ``native_bf16``."""
    monkeypatch.setattr("muonkit.precision.cpu_native_bf16", lambda: False)


@pytest.fixture
def native_bf16(monkeypatch):
    """A CPU with native bf16 (AVX512-BF16/AMX), as ``ns_dtype="auto"`` sees it."""
    monkeypatch.setattr("muonkit.precision.cpu_native_bf16", lambda: True)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions draw, kept open instead of saved."""
    from muonlab.report import plots

    drawn = []

    def keep(fig, path, title=""):
        if title:
            plots.set_title(fig, title)
        drawn.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "save", keep)
    yield drawn
    for fig in drawn:
        plots.plt.close(fig)
