"""Muon(compile_step=True): the step through torch.compile equals the eager step."""

import copy
import shutil

import pytest
import torch

from muonkit import Muon

SHAPES = [(12, 8), (8, 20), (12, 8)]  # two shapes, one batched pair: both paths of the step


def compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (None when it can)."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) is not supported on this Python/platform"
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler for inductor's CPU code"
    return None


def steps_match(device: str, compile_step, shapes=SHAPES) -> None:
    """Three steps of Muon(compile_step=...) against the eager step, both in fp32 with AOL
    and weight decay, the LR halved after each step: parameters and momentum agree to fp32
    rounding, and dynamo compiled at least one graph."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=g).to(device) for s in shapes]
    eager_p = [torch.nn.Parameter(w.clone()) for w in start]
    compiled_p = [torch.nn.Parameter(w.clone()) for w in start]
    kw = dict(lr=0.05, weight_decay=0.1, ns_dtype=torch.float32, ns_precondition="aol")
    eager, compiled = Muon(eager_p, **kw), Muon(compiled_p, **kw, compile_step=compile_step)
    torch._dynamo.utils.counters.clear()
    for _ in range(3):
        grads = [torch.randn(s, generator=g).to(device) for s in shapes]
        for p, q, grad in zip(eager_p, compiled_p, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        eager.step()
        compiled.step()
        for opt in (eager, compiled):  # an LR schedule: the compiled part must not depend on it
            opt.param_groups[0]["lr"] *= 0.5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    for p, q in zip(eager_p, compiled_p):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(compiled.state[q]["momentum_buffer"],
                                   eager.state[p]["momentum_buffer"], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(compile_unavailable() is not None, reason=str(compile_unavailable()))
@pytest.mark.parametrize("compile_step", [True, "reduce-overhead"])
def test_compiled_step_matches_the_eager_step_to_fp32_rounding(compile_step):
    steps_match("cpu", compile_step)  # one tiny case: a CPU compile takes 10-60 s


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compile_step", [True, "reduce-overhead"])
def test_compiled_step_matches_the_eager_step_on_cuda(compile_step):
    # the CUDA graph ("reduce-overhead") replays on the second step with new gradients
    steps_match("cuda", compile_step, SHAPES + [(64, 256), (256, 64)])


def test_compile_step_is_kept_by_copies_and_checked():
    opt = Muon([torch.nn.Parameter(torch.randn(4, 4))], compile_step=True)
    assert opt.group_step.compile and copy.deepcopy(opt).group_step.compile
    graphs = Muon([torch.nn.Parameter(torch.randn(4, 4))], compile_step="reduce-overhead")
    assert copy.deepcopy(graphs).group_step.compile == "reduce-overhead"
    assert not Muon([torch.nn.Parameter(torch.randn(4, 4))]).group_step.compile
    with pytest.raises(ValueError, match="compile_step"):
        Muon([torch.nn.Parameter(torch.randn(4, 4))], compile_step="yes")
