import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: intra-op threads gain nothing, and on a busy 2-core machine
    they cost a lot (threads stall at every barrier while another process holds a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
