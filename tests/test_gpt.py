"""GPT model, its optimizer split, and the text data it trains on."""

import numpy as np
import pytest
import torch

from muonkit.hybrid import MuonWithAuxAdam, param_roles
from muonlab.data import text
from muonlab.models.gpt import GPT, PRESETS, GPTConfig, preset_config
from muonlab.train.gpt import gpt_optimizer


def small(**kw):
    cfg = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    return GPTConfig(**cfg)


# ------------------------------------------------------------------ model


def test_presets_match_their_sources():
    tiny = preset_config("tiny", vocab_size=65)
    assert (tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.block_size, tiny.dropout) == (
        4, 4, 128, 64, 0.0,
    )
    gpt2 = preset_config("gpt2-124m")
    assert (gpt2.n_layer, gpt2.n_head, gpt2.n_embd, gpt2.block_size, gpt2.vocab_size) == (
        12, 12, 768, 1024, 50304,
    )
    assert preset_config("small").n_embd == 384


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown GPT preset 'huge'") as e:
        preset_config("huge")
    for name in PRESETS:
        assert name in str(e.value)
    with pytest.raises(TypeError, match="'n_layers'; did you mean n_layer"):
        preset_config("tiny", n_layers=3)
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=30, n_head=4)


@pytest.mark.parametrize("rope", [False, True])
def test_forward_is_causal(rope):
    torch.manual_seed(0)
    model = GPT(small(rope=rope)).eval()
    x = torch.randint(0, 37, (2, 16))
    logits = model(x)
    assert logits.shape == (2, 16, 37)
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % 37  # change the future only
    logits2 = model(x2)
    torch.testing.assert_close(logits[:, :10], logits2[:, :10], rtol=0, atol=1e-6)
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:])
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_rope_scores_depend_on_relative_position_only():
    from muonlab.models.gpt import apply_rotary, rotary_tables

    model = GPT(small(rope=True))
    assert model.wpe is None and "wpe.weight" not in dict(model.named_parameters())
    cos, sin = rotary_tables(16, 8, 10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):  # q at position m, k at position n
        qm = apply_rotary(q.expand(1, 1, 16, 8), cos, sin)[0, 0, m]
        kn = apply_rotary(k.expand(1, 1, 16, 8), cos, sin)[0, 0, n]
        return qm @ kn

    torch.testing.assert_close(apply_rotary(q.expand(1, 1, 16, 8), cos, sin)[0, 0, 0], q)
    torch.testing.assert_close(score(5, 2), score(12, 9), rtol=0, atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4))


def test_generate_samples_within_top_k():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    start = torch.zeros(1, 1, dtype=torch.long)
    out = model.generate(start, 20, top_k=1)  # greedy: each token is the argmax
    assert out.shape == (1, 21) and torch.equal(out[:, :1], start)
    for t in range(1, 21):
        assert out[0, t] == model(out[:, max(0, t - 16) : t])[0, -1].argmax()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = model.generate(start, 5, generator=g1), model.generate(start, 5, generator=g2)
    assert torch.equal(a, b)


def test_weight_tying():
    tied = GPT(small())
    assert tied.lm_head.weight is tied.wte.weight
    untied = GPT(small(tie_weights=False))
    assert untied.lm_head.weight is not untied.wte.weight


def test_num_params_and_flops_match_hand_count():
    c = small()
    V, T, L, C = c.vocab_size, c.block_size, c.n_layer, c.n_embd
    per_block = 3 * C * C + C * C + 4 * C * C + 4 * C * C + 2 * C  # qkv, proj, fc, proj, 2 LN
    n = V * C + L * per_block + C  # tied wte/lm_head, blocks, ln_f (no biases by default)
    model = GPT(c)
    assert model.num_params() == n
    assert model.num_params(non_embedding=False) == n + T * C
    assert model.estimate_flops_per_token() == 6 * n + 12 * L * C * T


@pytest.mark.parametrize("tie", [True, False])
def test_hybrid_split_puts_each_parameter_where_it_belongs(tie):
    model = GPT(small(bias=True, tie_weights=tie))
    roles = param_roles(model)
    expected = {"wte.weight": "embedding", "wpe.weight": "embedding"}
    if not tie:
        expected["lm_head.weight"] = "head"
    for i in range(2):
        for mat in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            expected[f"blocks.{i}.{mat}.weight"] = "muon"
            expected[f"blocks.{i}.{mat}.bias"] = "vector"
        for ln in ("ln_1", "ln_2"):
            expected[f"blocks.{i}.{ln}.weight"] = "vector"
            expected[f"blocks.{i}.{ln}.bias"] = "vector"
    expected["ln_f.weight"] = expected["ln_f.bias"] = "vector"
    assert roles == expected  # tied: lm_head.weight is wte.weight, listed once

    opt = gpt_optimizer(model, "muon")
    assert isinstance(opt, MuonWithAuxAdam)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = []
    for g in opt.param_groups:
        for p in g["params"]:
            seen.append(names[id(p)])
            assert g["use_muon"] == (expected[names[id(p)]] == "muon")
            if expected[names[id(p)]] == "muon":
                assert g["lr"] == 0.02
            else:
                assert g["lr"] == 6e-4 and g["betas"] == (0.9, 0.95)
    assert sorted(seen) == sorted(expected)  # each parameter exactly once


def test_adamw_follows_nanogpt():
    model = GPT(small(bias=True))
    opt = gpt_optimizer(model, "adamw")
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == 6e-4 and decay["betas"] == (0.9, 0.95)
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown optimizer .sgd."):
        gpt_optimizer(model, "sgd")


def test_qkv_split_group():
    model = GPT(small())
    opt = gpt_optimizer(model, "muon", qkv_split=True)
    qkv = [g for g in opt.param_groups if g.get("ns_split") == 3]
    assert len(qkv) == 1
    assert {id(p) for p in qkv[0]["params"]} == {id(b.attn.c_attn.weight) for b in model.blocks}
    x = torch.randint(0, 37, (2, 16))
    model(x).sum().backward()
    opt.step()  # the split group steps


# ------------------------------------------------------------------ data


def test_bundled_tinyshakespeare_char_split():
    data = text.load_text()
    raw = text.bundled_text()
    assert data.vocab_size == 65 == len(set(raw))
    assert len(data.train) + len(data.val) == len(raw) == 1115394
    assert len(data.train) == int(len(raw) * 0.9)
    assert data.decode(data.train[:14]) == raw[:14] == "First Citizen:"
    assert data.decode(data.val[:20]) == raw[len(data.train) : len(data.train) + 20]


def test_text_file_and_bin_dir_round_trip(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("hello world, hello muon! " * 20)
    data = text.load_text(src)
    assert data.vocab_size == len(set(src.read_text()))
    out = text.prepare_bin(src, tmp_path / "bins")
    binned = text.load_text(out)
    assert isinstance(binned.train, np.memmap) and binned.vocab_size == data.vocab_size
    np.testing.assert_array_equal(binned.train, data.train)
    np.testing.assert_array_equal(binned.val, data.val)
    assert binned.decode(binned.val) == data.decode(data.val)


def test_byte_tokenizer_reads_any_text_and_round_trips(tmp_path):
    raw = "naïve café, 1,234 €; 日本語\n" * 20  # multi-byte UTF-8 characters
    src = tmp_path / "u.txt"
    src.write_text(raw, encoding="utf-8")
    data = text.load_text(src, tokenizer="byte")
    assert data.vocab_size == 256 and data.tokenizer == "byte"
    blob = raw.encode("utf-8")
    assert list(data.train) + list(data.val) == list(blob)  # the ids are the UTF-8 bytes
    assert len(data.train) == int(len(blob) * 0.9)
    assert data.decode(data.encode(raw)) == raw
    assert data.decode([0xE6, 0x97]) == "\ufffd"  # a cut character: replaced, not an error
    binned = text.load_text(text.prepare_bin(src, tmp_path / "bins", tokenizer="byte"))
    assert (binned.vocab_size, binned.tokenizer) == (256, "byte")
    np.testing.assert_array_equal(binned.val, data.val)
    assert binned.decode(binned.encode(raw)) == raw
    bundled = text.load_text(tokenizer="byte")
    assert bundled.vocab_size == 256
    assert bundled.decode(bundled.train[:14]) == "First Citizen:"


def test_missing_data_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist.*train.bin"):
        text.load_text(tmp_path / "nope.txt")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.bin").write_bytes(b"\x00\x00" * 10)
    with pytest.raises(FileNotFoundError, match="val.bin does not exist.*prepare_bin"):
        text.load_text(tmp_path / "d")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        text.load_text(tokenizer="bpe")


def test_gpt2_tokenizer_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install"):
            text.load_text(tokenizer="gpt2")
    else:
        with pytest.raises(FileNotFoundError, match="not in its cache.*never downloads"):
            text.load_text(tokenizer="gpt2")


def test_batch_larger_than_data_is_refused():
    tokens = np.arange(100, dtype=np.uint16)
    with pytest.raises(ValueError, match="larger than the 100 tokens of the val split"):
        text.TokenBatches(tokens, batch_size=8, block_size=16, split="val")
    with pytest.raises(ValueError, match="must be > 0"):
        text.TokenBatches(tokens, batch_size=0, block_size=16)


def test_batches_are_shifted_windows_and_resumable():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = text.TokenBatches(tokens, batch_size=4, block_size=8, seed=3)
    x, y = sampler.next_batch()
    assert x.dtype == torch.int64 and x.shape == (4, 8)
    torch.testing.assert_close(y, x + 1)  # tokens are their positions here
    torch.testing.assert_close(x[:, 1:], x[:, :-1] + 1)
    state = sampler.state_dict()
    ahead = [sampler.next_batch() for _ in range(3)]
    other = text.TokenBatches(tokens, batch_size=4, block_size=8, seed=99)
    other.load_state_dict(state)
    for (a, _), (b, _) in zip(ahead, [other.next_batch() for _ in range(3)]):
        assert torch.equal(a, b)
    fixed1 = text.fixed_batches(tokens, 4, 8, num_batches=2, seed=0)
    fixed2 = text.fixed_batches(tokens, 4, 8, num_batches=2, seed=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(fixed1, fixed2))
