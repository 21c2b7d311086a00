from muonlab.cli import main
from muonlab.experiments.demo import run


def test_demo_loss_falls():
    losses = run(steps=60, batch=64)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5


def test_cli_demo(capsys):
    assert main(["demo", "--steps", "20"]) == 0
    assert "mean loss" in capsys.readouterr().out
