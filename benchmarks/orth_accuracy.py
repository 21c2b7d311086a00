"""Orthogonalization accuracy of each Newton-Schulz method against the exact polar factor.

Usage: ``python benchmarks/orth_accuracy.py`` (``make bench``); writes its section of
docs/results/benchmarks.md and docs/results/bench/orth_accuracy.png.

Inputs: (1) a 256 x 1024 matrix with singular values spread log-uniformly on [1e-3, 1];
(2) the hidden-matrix gradients of muonkit's tiny GPT after a few AdamW steps on the bundled
tinyshakespeare. For each method and step count: max |sigma - 1| of the output's singular
values (0 for an exact polar factor), and the cosine between the output and the exact polar
factor U V^T (1 = same direction; the Muon update direction is what matters for training).
The figure (:func:`muonlab.report.plots.plot_orth_accuracy`) plots the four against the step
count, from the records; ``python benchmarks/orth_accuracy.py --redraw`` redraws it from the
committed ``docs/results/bench/orth_accuracy.json`` without measuring.

Mixed precision (``ns_dtype="mixed"``: fp32 first, the last ``MIXED_BF16_STEPS`` in bf16) gets
a switch-point table: for 5 and 8 steps and every number of final bf16 steps, each error of the
mixed iteration divided by that of the fp32 iteration (max |sigma - 1|, and 1 - cos, on both
inputs); the worst of the four must stay <= 1.1 (issue 14: within 10% of fp32's accuracy).
"""

from __future__ import annotations

import argparse
import functools
import json

import torch
from common import FRAGMENTS, hardware, markdown_table, write_fragment  # noqa: E402

from muonkit import precision  # noqa: E402
from muonkit.orthogonalize import (  # noqa: E402
    _standard_iteration,
    newton_schulz,
    polar,
    resolve_schedule,
)
from muonlab.data.text import TokenBatches, load_text  # noqa: E402
from muonlab.models.gpt import GPT, preset_config  # noqa: E402
from muonlab.report.plots import plot_orth_accuracy  # noqa: E402
from muonlab.train.gpt import gpt_optimizer, lm_loss  # noqa: E402

# (label, coefficients, dtype, gram)
METHODS = [
    ("jordan fp32 (muonkit default)", "jordan", torch.float32, None),
    ("jordan fp32, standard form", "jordan", torch.float32, False),
    ("polar_express fp32", "polar_express", torch.float32, None),
    ("jordan bf16 (torch.optim.Muon, muon.py)", "jordan", torch.bfloat16, False),
    ("polar_express bf16", "polar_express", torch.bfloat16, False),
    ("jordan mixed (fp32 first, last 4 steps bf16)", "jordan", "mixed", None),
    ("polar_express mixed", "polar_express", "mixed", None),
]
STEPS = (3, 4, 5, 6, 8)
SEED = 0  # of the synthetic matrix and of the GPT whose gradients are the second input
FIGURE = FRAGMENTS / "orth_accuracy.png"


def precision_name(dtype) -> str:
    return "mixed" if dtype == "mixed" else "bf16" if dtype == torch.bfloat16 else "fp32"


def draw(results: list[dict]) -> None:
    """The figure of the records ``results`` (label -> coefficients, precision, standard form
    from :data:`METHODS`)."""
    methods = {label: (coeffs, precision_name(dtype), gram is False or dtype == torch.bfloat16)
               for label, coeffs, dtype, gram in METHODS}
    plot_orth_accuracy(results, methods, FIGURE,
                       f"Newton-Schulz accuracy vs steps: one synthetic 256 x 1024 matrix (seed "
                       f"{SEED}) and the tiny GPT's gradients (seed {SEED}); one measurement "
                       f"each, no interval")


def synthetic(m: int = 256, n: int = 1024, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    sigma = torch.logspace(-3, 0, m, dtype=torch.float64)
    return ((U * sigma) @ V.T).float(), sigma


def gpt_gradients(steps: int = 5, seed: int = SEED) -> list[torch.Tensor]:
    """Gradients of the tiny GPT's hidden matrices after ``steps`` AdamW steps."""
    torch.manual_seed(seed)
    data = load_text()
    model = GPT(preset_config("tiny", vocab_size=data.vocab_size))
    opt = gpt_optimizer(model, "adamw", lr=1e-3)
    batches = TokenBatches(data.train, 12, model.config.block_size, seed=seed, split="train")
    for _ in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        lm_loss(model, batches.next_batch()).backward()
        if _ < steps:
            opt.step()
    return [p.grad.detach().clone() for n, p in model.named_parameters()
            if p.ndim == 2 and ("attn" in n or "mlp" in n)]


def metrics(out: torch.Tensor, G: torch.Tensor, floor: float = 0.0) -> tuple[float, float]:
    """(max |sigma_out - 1| over G's singular directions with sigma >= floor * sigma_max,
    cosine of ``out`` to the exact polar factor). sigma_out of a direction is u^T out v."""
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    s_out = torch.diagonal(U.mT @ out.double() @ Vh.mT)
    keep = S >= floor * S.max()
    exact = polar(G.double())
    cos = float((out.double() * exact).sum() / (out.double().norm() * exact.norm()))
    return float((s_out[keep] - 1).abs().max()), cos


GRAD_FLOOR = 1e-2
SWITCH_STEPS = (5, 8)


def evaluate(G, grads, steps, coeffs, dtype, gram) -> tuple[float, float, float, float]:
    """(synthetic max err, synthetic cos, GPT grads max err, GPT grads min cos)."""
    err, cos = metrics(newton_schulz(G, steps, coeffs, dtype=dtype, gram=gram), G)
    real = [
        metrics(newton_schulz(g, steps, coeffs, dtype=dtype, gram=gram), g, GRAD_FLOOR)
        for g in grads
    ]
    return err, cos, max(e for e, _ in real), min(c for _, c in real)


def error_ratio(result, reference) -> float:
    """The worst of max-err and (1 - cos) ratios to the reference, over both inputs."""
    return max(
        result[0] / reference[0],
        (1 - result[1]) / (1 - reference[1]),
        result[2] / reference[2],
        (1 - result[3]) / (1 - reference[3]),
    )


def bf16_first(G, steps: int, coeffs: str, fp32_steps: int) -> torch.Tensor:
    """The other order (issue 14's first guess): the first steps in bf16 (standard form), the
    last ``fp32_steps`` in fp32, as one continued iteration."""
    schedule = resolve_schedule(coeffs)
    X = G.to(torch.bfloat16)
    X = X.mT if G.shape[-2] > G.shape[-1] else X
    X = X / (X.norm() * schedule.norm_safety + 1e-7)
    abc = schedule.for_steps(steps)
    X = _standard_iteration(X, abc[: steps - fp32_steps]).float()
    X = _standard_iteration(X, abc[steps - fp32_steps :])
    return (X.mT if G.shape[-2] > G.shape[-1] else X).float()


def evaluate_fn(G, grads, fn) -> tuple[float, float, float, float]:
    err, cos = metrics(fn(G), G)
    real = [metrics(fn(g), g, GRAD_FLOOR) for g in grads]
    return err, cos, max(e for e, _ in real), min(c for _, c in real)


def switch_point(G, grads) -> tuple[list[list[str]], list[dict]]:
    """Mixed precision with every number of final bf16 steps against fp32 (the real code
    path, ``precision.MIXED_BF16_STEPS`` varied)."""
    rows, data = [], []
    default = precision.MIXED_BF16_STEPS
    try:
        for coeffs in ("jordan", "polar_express"):
            for steps in SWITCH_STEPS:
                fp32 = evaluate(G, grads, steps, coeffs, torch.float32, None)
                for bf16_steps in range(steps + 1):
                    precision.MIXED_BF16_STEPS = bf16_steps
                    dtype = torch.bfloat16 if bf16_steps == steps else "mixed"
                    result = evaluate(G, grads, steps, coeffs, dtype, None)
                    ratio = error_ratio(result, fp32)
                    data.append(dict(coefficients=coeffs, steps=steps, bf16_steps=bf16_steps,
                                     results=result, fp32=fp32, worst_ratio=ratio))
                    rows.append([coeffs, str(steps), f"{steps - bf16_steps} + {bf16_steps}",
                                 *(f"{x:.4f}" for x in result), f"{ratio:.3f}",
                                 "yes" if ratio <= 1.1 else "no"])
                for fp32_steps in (1, 2):
                    result = evaluate_fn(G, grads, functools.partial(
                        bf16_first, steps=steps, coeffs=coeffs, fp32_steps=fp32_steps))
                    ratio = error_ratio(result, fp32)
                    data.append(dict(coefficients=coeffs, steps=steps, bf16_first=True,
                                     fp32_steps=fp32_steps, results=result, worst_ratio=ratio))
                    rows.append([coeffs, str(steps),
                                 f"bf16 first: {steps - fp32_steps} bf16 + {fp32_steps} fp32",
                                 *(f"{x:.4f}" for x in result), f"{ratio:.3f}",
                                 "yes" if ratio <= 1.1 else "no"])
    finally:
        precision.MIXED_BF16_STEPS = default
    return rows, data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--redraw", action="store_true",
                    help="measure nothing: redraw the figure from the committed records")
    args = ap.parse_args(argv)
    if args.redraw:
        draw(json.loads((FRAGMENTS / "orth_accuracy.json").read_text())["results"])
        print(f"wrote {FIGURE}")
        return 0
    G, sigma = synthetic()
    grads = gpt_gradients()
    rows, data = [], {"hardware": hardware(torch.device("cpu")), "seed": SEED, "results": []}
    for label, coeffs, dtype, gram in METHODS:
        for steps in STEPS:
            err, cos, real_err, real_cos = evaluate(G, grads, steps, coeffs, dtype, gram)
            data["results"].append(dict(method=label, steps=steps, synthetic_max_err=err,
                                        synthetic_cos=cos, gpt_max_err=real_err,
                                        gpt_min_cos=real_cos))
            rows.append([label, str(steps), f"{err:.3f}", f"{cos:.4f}", f"{real_err:.3f}",
                         f"{real_cos:.4f}"])
    switch_rows, data["switch_point"] = switch_point(G, grads)
    print(markdown_table(["method", "steps", "synthetic max abs(sigma-1)", "synthetic cos",
                          "GPT grads max abs(sigma-1)", "GPT grads min cos"], rows))
    FRAGMENTS.mkdir(parents=True, exist_ok=True)
    draw(data["results"])
    md = "\n".join([
        "## Orthogonalization accuracy (`benchmarks/orth_accuracy.py`)\n",
        "Synthetic: 256 x 1024, singular values log-uniform on [1e-3, 1]. GPT grads: the 16 "
        "hidden-matrix gradients of the tiny GPT after 5 AdamW steps on tinyshakespeare (max "
        "error / min cosine over them; the error over each gradient's singular directions with "
        f"sigma >= {GRAD_FLOOR} sigma_max, as gradients are near rank-deficient). sigma_out of "
        "a direction u, v of the input is u^T out v; cos = cosine to the exact polar factor "
        "U V^T.\n",
        markdown_table(["method", "steps", "synthetic max abs(sigma-1)", "synthetic cos",
                        "GPT grads max abs(sigma-1)", "GPT grads min cos"], rows),
        f"![accuracy vs Newton-Schulz steps]({FIGURE.name})\n",  # beside the fragment
        "### Mixed precision: where to switch from fp32 to bf16\n",
        "Each run: the first steps in fp32 (Gram side where cheaper), the rest in bf16 "
        "(`fp32 + bf16` steps; `0 + n` is plain bf16); the `bf16 first` rows run the other "
        "order (bf16 early, fp32 late). `worst ratio`: the largest of the four "
        "errors (max abs(sigma-1) and 1 - cos, synthetic and GPT grads) divided by the fp32 "
        "iteration's. Rounding G or an early iterate to bf16 loses the directions of small "
        "singular values and later steps amplify that noise, so the early steps need fp32 and "
        f"the late ones do not; `ns_dtype=\"mixed\"` runs the last "
        f"{precision.MIXED_BF16_STEPS} steps in bf16.\n",
        markdown_table(["coefficients", "steps", "fp32 + bf16", "synthetic max err",
                        "synthetic cos", "GPT max err", "GPT min cos", "worst ratio",
                        "within 10%"], switch_rows),
    ])
    if not args.no_write:
        print(f"wrote {write_fragment('orth_accuracy', md, data)} and {FIGURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
