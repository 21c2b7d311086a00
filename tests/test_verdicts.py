"""The README and the study pages state only the verdicts the statistics layer prints from the
committed records (docs/results): every verdict block equals its generated text, and the prose
outside the blocks states no verdict word, interval or mean ± std of its own."""

from pathlib import Path

import pytest

from muonlab.cli import main
from muonlab.report import verdicts
from muonlab.report.stats import compare

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "studies").glob("*.md"))]


@pytest.fixture(scope="module")
def generated():
    """Every block the pages hold, generated once from the committed records."""
    names = [n for page in PAGES for n in verdicts.block_names(page.read_text())]
    return verdicts.generate(names, RESULTS)


def test_the_readme_states_its_results_in_verdict_blocks():
    results = verdicts.results_section((ROOT / "README.md").read_text())
    assert {"compare-heldout", "horizon-gpu", "horizon-micro", "variants-gpt",
            "finetune-summary"} <= set(
        verdicts.block_names(results))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_verdict_block_is_what_the_layer_prints(page, generated):
    text = page.read_text()
    assert verdicts.stale_blocks(text, generated) == [], (
        f"{page.name}: regenerate with `muonkit results verdicts`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_verdict_is_stated_outside_the_blocks(page):
    text = page.read_text()
    if page.name == "README.md":
        text = verdicts.results_section(text)
    assert verdicts.unsupported_claims(text) == []


def test_a_verdict_or_number_the_numbers_do_not_support_fails(generated):
    """A README bullet edited to say "behind" where the layer says "ahead", or with another
    number, is caught; so is a verdict stated in the prose outside a block."""
    readme = (ROOT / "README.md").read_text()
    assert "n=5: ahead" in generated["compare-heldout"]
    rendered = verdicts.render(readme, generated)
    assert verdicts.stale_blocks(rendered, generated) == []
    behind = rendered.replace("(paired t, n=5: ahead).", "(paired t, n=5: behind).", 1)
    assert behind != rendered and verdicts.stale_blocks(behind, generated) == ["compare-heldout"]
    gap = generated["compare-heldout"].split(" [")[0].split()[-1]  # Muon - AdamW, e.g. -0.159
    number = rendered.replace(f"{gap} [", f"{float(gap) - 0.001:.3f} [", 1)
    assert number != rendered and verdicts.stale_blocks(number, generated) == ["compare-heldout"]
    claim = rendered.replace("[docs/studies/compare.md]",
                             "Muon is ahead of AdamW. [docs/studies/compare.md]", 1)
    (found,) = verdicts.unsupported_claims(verdicts.results_section(claim))
    assert found.startswith("Muon is ahead of AdamW. [docs/studies/compare.md]")
    for prose in ("the gap is -0.31 [-0.40, -0.20]", "1.640 ± 0.004 vs 1.812", "Kronecker beats"):
        assert verdicts.unsupported_claims(prose) == [prose]


def test_blocks_are_wrapped_at_their_indent_and_grouped_when_they_share_a_verdict():
    a = compare([1.0, 2.0], [1.5, 2.1], paired=True, higher_is_better=False)
    b = compare([1.0, 2.0], [1.2, 2.4], paired=True, higher_is_better=False)
    text = verdicts.grouped([("x", a), ("y", b)])
    assert text == (f"x {a.interval_text()}; y {b.interval_text()} (each paired t, n=2: "
                    "not resolved (n=2 < 5 report seeds))")
    page = "- bullet:\n  <!-- verdict:v -->\n  old\n  <!-- /verdict -->\n"
    out = verdicts.render(page, {"v": "word " * 40})
    lines = out.splitlines()[2:-1]
    assert len(lines) == 3 and all(ln.startswith("  word") and len(ln) <= 96 for ln in lines)
    with pytest.raises(ValueError, match="unknown verdict block"):
        verdicts.generate(["no-such-block"], RESULTS)


def test_the_command_rewrites_stale_blocks_and_check_exits_1(tmp_path, capsys, generated):
    page = tmp_path / "page.md"
    page.write_text("x\n<!-- verdict:compare-tiny -->\nstale\n<!-- /verdict -->\n")
    argv = ["results", "verdicts", str(page), "--results", str(RESULTS)]
    assert main([*argv, "--check"]) == 1 and "stale" in page.read_text()
    assert main(argv) == 0
    assert page.read_text() == ("x\n<!-- verdict:compare-tiny -->\n"
                                + verdicts.body(generated["compare-tiny"], "")
                                + "<!-- /verdict -->\n")
    assert "not resolved" in page.read_text() and main([*argv, "--check"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["results", "verdicts", str(tmp_path / "missing.md")])
    assert exit_info.value.code == 2 and "not found" in capsys.readouterr().err


def test_a_horizon_verdict_names_its_unfinished_horizons(tmp_path):
    """The horizon blocks list every horizon: a gap where both cells are finished, and
    "unfinished" (never a guess) where the Muon cell is not."""
    import shutil

    shutil.copytree(RESULTS / "horizon-gpu", tmp_path / "horizon-gpu")
    shutil.rmtree(tmp_path / "horizon-gpu" / "h601" / "muon")
    text = verdicts.horizon_muon(tmp_path, "horizon-gpu")
    assert "601 steps (6 tokens/param) unfinished" in text
    assert text.startswith("tuned Muon hybrid - AdamW") and "200 steps (2 tokens/param) -0." in text


def test_the_weight_decay_verdict_is_muon_wd_minus_muon_paired_by_seed():
    """At every horizon the block's difference is recomputed here from the runs' own records:
    each contender's run at the LR its sweep chose (sweeps.json), per report seed, paired."""
    import json

    import numpy as np

    from muonlab.report.metrics import load_run

    out = RESULTS / "horizon-gpu"
    study, sweeps = json.loads((out / "study.json").read_text()), json.loads(
        (out / "sweeps.json").read_text())
    text = verdicts.horizon_weight_decay(RESULTS)

    def finals(h, name):
        lr = sweeps[str(h)][name]["best"]
        return np.array([load_run(out / f"h{h}" / name / f"lr{lr:g}-s{s}" / "metrics.jsonl")
                         .val[-1]["val_loss"] for s in study["seeds"]])

    for h in study["horizons"]:
        d = finals(h, "muon-wd") - finals(h, "muon")
        half = 2.7764 * d.std(ddof=1) / np.sqrt(len(d))  # t_{0.975, 4}
        assert f"{h} steps" in text and (
            f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]") in text
    assert text.count("paired t, n=5") == 3 and "0.077 with decay, 0.184 without" in text


def test_the_gamma_ablation_verdict_pairs_each_rank_with_its_default():
    """Recomputed from the run records: each ablation's final val loss minus the same rank's
    at the default gamma1, per report seed, at the LRs the sweeps chose."""
    import json

    import numpy as np

    from muonlab.report.metrics import load_run

    out = RESULTS / verdicts.GPT_VARIANTS
    sweeps = json.loads((out / "sweeps.json").read_text())["800"]
    text = verdicts.variants_gpt_gamma(RESULTS)

    def finals(name):
        lr = sweeps[name]["best"]
        return np.array([load_run(out / "h800" / name / f"lr{lr:g}-s{s}" / "metrics.jsonl")
                         .val[-1]["val_loss"] for s in range(1, 6)])

    def interval(d):
        half = 2.7764 * d.std(ddof=1) / np.sqrt(len(d))  # t_{0.975, 4}
        return f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"

    for g in ("0.2", "0.5"):
        for r in (1, 16):
            assert f"lorapre-r{r} gamma1={g} (LR " in text
            assert interval(finals(f"lorapre-r{r}-gamma{g}") - finals(f"lorapre-r{r}")) in text
        assert interval(finals(f"lorapre-r16-gamma{g}") - finals(f"lorapre-r1-gamma{g}")) in text
    assert interval(finals("lorapre-r16") - finals("lorapre-r1")) in text
    for r in (1, 16):  # from one factor step to the next, and the rank gap's change
        step = finals(f"lorapre-r{r}-gamma0.5") - finals(f"lorapre-r{r}-gamma0.2")
        assert f"lorapre-r{r} gamma1=0.5 minus gamma1=0.2 {interval(step)}" in text
    rank_gap = {g: finals(f"lorapre-r16-gamma{g}") - finals(f"lorapre-r1-gamma{g}")
                for g in ("0.2", "0.5")}
    moved = interval(rank_gap["0.5"] - rank_gap["0.2"])
    assert (f"lorapre-r16's gap to lorapre-r1 at gamma1=0.5 minus at gamma1=0.2 {moved} (paired "
            "t, n=5: gains ground)") in text


def test_the_group_lr_verdict_pairs_each_arm_with_its_one_lr_study():
    """Recomputed from the run records: AdamW at its chosen group multipliers minus AdamW at
    one LR (compare-heldout), per report seed; an arm that kept every group at x1 is said to
    repeat that study's runs, and does (the same final losses)."""
    import json

    import numpy as np

    from muonlab.report.metrics import load_run

    def finals(study, name):
        entry = json.loads((RESULTS / study / "sweeps.json").read_text())["2000"][name]
        suffix = "".join(f"-{label}{entry.get('best_groups', {}).get(role, 1):g}"
                         for role, label in (("embedding", "emb"), ("vector", "vec"))
                         if entry.get("best_groups", {}).get(role, 1) != 1)
        return np.array([load_run(RESULTS / study / "h2000" / name /
                                  f"lr{entry['best']:g}{suffix}-s{s}" / "metrics.jsonl")
                         .val[-1]["val_loss"] for s in range(1, 6)]), suffix

    text = verdicts.compare_groups(RESULTS)
    grouped, suffix = finals("compare-groups", "adamw")
    assert suffix == "-emb2" and "adamw LR 0.004, embedding LR x2" in text
    d = grouped - finals("compare-heldout", "adamw")[0]
    half = 2.7764 * d.std(ddof=1) / np.sqrt(len(d))  # t_{0.975, 4}
    assert f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]" in text
    muon, kept = finals("compare-groups", "muon")
    assert kept == "" and "muon kept every group at x1" in text
    assert np.array_equal(muon, finals("compare-heldout", "muon")[0])


def test_the_no_momentum_verdict_pairs_each_arm_with_muon_at_momentum_zero():
    """Recomputed from the run records: each LoRA-Pre rank (and dense Muon) minus Muon at
    momentum 0, per report seed, at the LRs the sweeps chose."""
    import json

    import numpy as np

    from muonlab.report.metrics import load_run

    out = RESULTS / verdicts.GPT_VARIANTS
    sweeps = json.loads((out / "sweeps.json").read_text())["800"]

    def finals(name):
        lr = sweeps[name]["best"]
        return np.array([load_run(out / "h800" / name / f"lr{lr:g}-s{s}" / "metrics.jsonl")
                         .val[-1]["val_loss"] for s in range(1, 6)])

    text = verdicts.variants_gpt_no_momentum(RESULTS)
    base = finals(verdicts.NO_MOMENTUM)
    for name in ("lorapre-r1", "lorapre-r4", "lorapre-r16", "lorapre-r16-gamma0.2", "muon"):
        d = finals(name) - base
        half = 2.7764 * d.std(ddof=1) / np.sqrt(len(d))  # t_{0.975, 4}
        assert f"{name} (LR {sweeps[name]['best']:g}) {d.mean():+.3f} " \
               f"[{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]" in text


def test_the_tuned_decay_verdict_pairs_the_chosen_pair_with_adamw_and_the_hybrid_without():
    """Recomputed from the run records: ``muon-wd`` at the (LR, weight decay) its
    two-dimensional sweep chose minus AdamW of the same study, and minus the hybrid without
    decay of horizon-micro, per report seed."""
    import json

    import numpy as np

    from muonlab.report.metrics import load_run

    out, base = RESULTS / "horizon-micro-wd2d", RESULTS / "horizon-micro"
    study = json.loads((out / "study.json").read_text())
    sweeps = {d: json.loads((d / "sweeps.json").read_text()) for d in (out, base)}
    text = verdicts.horizon_tuned_decay(RESULTS)

    def finals(where, h, name):
        entry = sweeps[where][str(h)][name]
        knob = f"-wd{entry['best_knob']:g}" if "best_knob" in entry else ""
        return np.array([load_run(where / f"h{h}" / name / f"lr{entry['best']:g}{knob}-s{s}"
                                  / "metrics.jsonl").val[-1]["val_loss"]
                         for s in study["seeds"]])

    def interval(d):
        half = 2.7764 * d.std(ddof=1) / np.sqrt(len(d))  # t_{0.975, 4}
        return f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"

    for h in study["horizons"]:
        tuned = finals(out, h, "muon-wd")
        versus_adamw, versus_none = text.split("; - the hybrid without decay")
        assert interval(tuned - finals(out, h, "adamw")) in versus_adamw
        assert interval(tuned - finals(base, h, "muon")) in versus_none
        entry = sweeps[out][str(h)]["muon-wd"]
        assert f"LR {entry['best']:g}, muon weight decay {entry['best_knob']:g}" in text


def test_the_tuned_decay_verdict_refuses_studies_whose_runs_do_not_pair(tmp_path):
    import json
    import shutil

    for name in ("horizon-micro-wd2d", "horizon-micro"):
        (tmp_path / name).mkdir()
        for f in ("study.json", "sweeps.json", "contenders.json", "commands.txt"):
            shutil.copy(RESULTS / name / f, tmp_path / name / f)
    path = tmp_path / "horizon-micro" / "study.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"batch_size": 32}))
    with pytest.raises(ValueError, match="differ in batch_size: their runs do not pair"):
        verdicts.horizon_tuned_decay(tmp_path)
