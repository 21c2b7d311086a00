"""Head detection is one rule: the hybrid's AdamW head group and HybridKroneckerMuon's dense
output layer are the same modules."""

from torch import nn

from muonkit.heads import head_modules
from muonkit.hybrid import classify_params
from muonkit.variants import HybridKroneckerMuon


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16, bias=False), nn.Linear(16, 16, bias=False))
        self.decoder = nn.Module()
        self.decoder.classifier = nn.Linear(16, 4, bias=False)  # a head, not the last Linear
        self.proj = nn.Linear(16, 16, bias=False)


def test_hybrid_and_kronecker_agree_on_the_head():
    model = Nested()
    assert head_modules(model) == [model.decoder.classifier]
    hybrid_heads = {id(p) for _, p, role in classify_params(model) if role == "head"}
    opt = HybridKroneckerMuon(model, lr=0.02)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert not opt.dense_fallback
    assert hybrid_heads == {id(params[i]) for i in opt.dense_params}
    assert hybrid_heads == {id(model.decoder.classifier.weight)}
