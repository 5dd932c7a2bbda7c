"""
The specification, as tests. Offline, CPU, seconds: every checkpoint and image folder is made here.
Run: python -m pytest -q test_bridge.py
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import model
from model import GPT, GPTConfig, UserError

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- fixtures: tiny GPT-2 checkpoints made by transformers
def hf_gpt2(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=300, seed=0):
    """A random GPT2LMHeadModel from transformers (the reference implementation), eval mode, eager attention."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=vocab_size,
                     bos_token_id=0, eos_token_id=0, attn_implementation='eager')
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF's init (std 0.02, LayerNorm (1, 0), zero biases) hides mistakes: tiny activations make
        for name, p in hf.named_parameters():  # exact and tanh GELU agree to 1e-6. Give every tensor trained-like scale.
            if 'ln_' in name or name.endswith('bias'):
                p.add_(0.1 * torch.randn_like(p))
            elif '.h.' in name:  # Conv1D weights are [in, out]: std 1/sqrt(fan_in) keeps activations O(1)
                p.mul_(1 / (0.02 * p.shape[0] ** 0.5))
    return hf


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
    """A tiny GPT-2 saved by transformers' save_pretrained: config.json + model.safetensors."""
    hf = hf_gpt2()
    path = tmp_path_factory.mktemp('hf') / 'tiny-gpt2'
    hf.save_pretrained(path)
    return hf, str(path)


def tokens(vocab=300, B=2, T=20, seed=1):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- model.py: it is GPT-2
def test_logits_match_transformers_safetensors_dir(hf_dir):
    hf, path = hf_dir
    ours = GPT.from_pretrained(path).eval()
    idx = tokens()
    with torch.no_grad():
        ref = hf(idx).logits
        got = ours.lm_logits(idx)
    assert got.shape == ref.shape == (2, 20, 300)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_logits_match_transformers_bin_dir_with_mask_buffers(tmp_path, hf_dir):
    """The .bin layout of older HF checkpoints: `transformer.` prefix, lm_head.weight, attn.bias/masked_bias buffers."""
    hf, src = hf_dir
    sd = hf.state_dict()
    for i in range(hf.config.n_layer):  # what OpenAI's original files carry besides the parameters
        sd[f'transformer.h.{i}.attn.bias'] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        sd[f'transformer.h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
    assert 'lm_head.weight' in sd
    torch.save(sd, tmp_path / 'pytorch_model.bin')
    (tmp_path / 'config.json').write_text(open(os.path.join(src, 'config.json')).read())
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = tokens(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours.lm_logits(idx), hf(idx).logits, atol=1e-5, rtol=0)


def test_single_file_infers_official_width(tmp_path, capsys):
    """A bare weights file (no config.json) of GPT-2 small's width: 12 heads are inferred from n_embd 768.
    One layer and a 300-token vocabulary keep the file at 30 MB instead of 500."""
    hf = hf_gpt2(n_layer=1, n_head=12, n_embd=768, n_positions=16)
    from safetensors.torch import save_file
    sd = {k.removeprefix('transformer.'): v.contiguous() for k, v in hf.state_dict().items() if k != 'lm_head.weight'}
    save_file(sd, tmp_path / 'weights.safetensors')
    ours = GPT.from_pretrained(str(tmp_path / 'weights.safetensors')).eval()
    assert (ours.config.n_layer, ours.config.n_head, ours.config.n_embd, ours.config.block_size) == (1, 12, 768, 16)
    assert 'loaded GPT-2 1 layers x 768 wide, 12 heads from' in capsys.readouterr().out
    idx = tokens(T=16, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours.lm_logits(idx), hf(idx).logits, atol=1e-5, rtol=0)


def test_single_file_of_unofficial_width_is_refused(tmp_path, hf_dir):
    hf, _ = hf_dir
    torch.save(hf.state_dict(), tmp_path / 'w.bin')
    with pytest.raises(UserError, match=r'width 64 is not an official GPT-2 size.*config.json'):
        GPT.from_pretrained(str(tmp_path / 'w.bin'))


def test_image_path_equals_transformers_inputs_embeds(hf_dir):
    """Our patch tokens through our blocks == HF GPT2Model(inputs_embeds=the same tokens): causal, wpe added."""
    hf, path = hf_dir
    ours = GPT.from_pretrained(path, vocab_size=0, n_classes=5, img_size=32, patch_size=8).eval()
    assert not hasattr(ours.transformer, 'wte')  # image models carry no token embedding
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        x = ours.patch_tokens(images)
        # the row-major patch order, by hand: patch (row 1, col 2) of a 4x4 grid is token 6
        manual = (ours.patch.weight * images[:, :, 8:16, 16:24].unsqueeze(1)).sum((2, 3, 4)) + ours.patch.bias
        torch.testing.assert_close(x[:, 6], manual, atol=1e-5, rtol=0)
        ref = hf.transformer(inputs_embeds=x).last_hidden_state
        torch.testing.assert_close(ours.body(x), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.features(images), ref[:, -1], atol=1e-5, rtol=0)
        assert ours(images).shape == (3, 5)


def test_bidirectional_attention_and_mean_pooling(hf_dir):
    _, path = hf_dir
    images = torch.randn(2, 3, 32, 32)
    hidden, feats = {}, {}
    for causal, pool in ((True, 'last'), (False, 'last'), (True, 'mean')):
        m = GPT.from_pretrained(path, vocab_size=0, n_classes=5, img_size=32, patch_size=8, causal=causal, pool=pool).eval()
        torch.manual_seed(0)
        m.patch.reset_parameters()  # the same patch embedding in all three
        with torch.no_grad():
            hidden[causal, pool], feats[causal, pool] = m.body(m.patch_tokens(images)), m.features(images)
    torch.testing.assert_close(feats[True, 'mean'], hidden[True, 'mean'].mean(1))
    torch.testing.assert_close(feats[True, 'last'], hidden[True, 'last'][:, -1])
    # causal: the first patch sees only itself; bidirectional: every patch sees all of them
    assert (hidden[True, 'last'][:, 0] - hidden[False, 'last'][:, 0]).abs().max() > 1e-2
    assert not torch.equal(feats[True, 'last'], feats[False, 'last'])


@pytest.mark.parametrize('damage, message', [
    ('drop h.1.ln_2.bias', r'missing key h\.1\.ln_2\.bias'),
    ('add h.0.attn.extra', r'unexpected key h\.0\.attn\.extra'),
    ('reshape h.0.mlp.c_fc.weight', r'shape mismatch for h\.0\.mlp\.c_fc\.weight'),
    ('truncate', r'cannot read weights from .*model\.safetensors'),
])
def test_broken_checkpoints_name_the_problem(tmp_path, hf_dir, damage, message):
    from safetensors.torch import load_file, save_file
    _, src = hf_dir
    (tmp_path / 'config.json').write_text(open(os.path.join(src, 'config.json')).read())
    sd = load_file(os.path.join(src, 'model.safetensors'))
    what, _, key = damage.partition(' ')
    if what == 'drop':
        del sd['transformer.' + key]
    elif what == 'add':
        sd['transformer.' + key] = torch.zeros(3)
    elif what == 'reshape':
        sd['transformer.' + key] = torch.zeros(64, 64)
    save_file(sd, tmp_path / 'model.safetensors')
    if what == 'truncate':
        data = (tmp_path / 'model.safetensors').read_bytes()
        (tmp_path / 'model.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match=message):
        GPT.from_pretrained(str(tmp_path))


def test_missing_sources_and_offline_download(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"no weights '.*nope'.*gpt2, gpt2-medium"):
        GPT.from_pretrained(str(tmp_path / 'nope'))
    with pytest.raises(UserError, match=r'not a GPT-2 checkpoint directory.*config.json'):
        GPT.from_pretrained(str(tmp_path))
    # no network: a refused connection stands for it, so the test never downloads 500 MB where there is one
    monkeypatch.setattr(model, 'WEIGHTS_URL', 'http://127.0.0.1:9/{name}.safetensors')
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(UserError, match=r"could not download gpt2 from .*pass its path instead of 'gpt2'"):
        GPT.from_pretrained('gpt2')
    assert not os.path.exists(tmp_path / 'hub' / 'gpt2' / 'gpt2.safetensors')  # no half-written cache entry


def test_scratch_init_is_gpt2s():
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=256, vocab_size=0, n_classes=10, img_size=32, patch_size=4)
    m = GPT(cfg)
    sd = m.state_dict()
    assert abs(sd['transformer.h.0.attn.c_attn.weight'].std().item() - 0.02) < 0.002
    assert abs(sd['transformer.h.0.mlp.c_proj.weight'].std().item() - 0.02 / (2 * 4) ** 0.5) < 0.001
    assert sd['transformer.h.0.ln_1.weight'].eq(1).all() and sd['transformer.h.0.attn.c_attn.bias'].eq(0).all()
    assert sd['head.bias'].eq(0).all()


@pytest.mark.parametrize('spec, frozen_blocks, frozen_parts', [
    ('0-5', {0, 1, 2, 3, 4}, set()),
    ('0-5,wpe', {0, 1, 2, 3, 4}, {'wpe'}),
    ('3', {3}, set()),
    ('0,2,4', {0, 2, 4}, set()),
    ('6-8, head', {6, 7}, {'head'}),
    ('patch,ln_f', set(), {'patch', 'ln_f'}),
    ('all', set(range(8)), {'wpe', 'ln_f'}),
    ('none', set(), set()),
])
def test_freeze_specs(spec, frozen_blocks, frozen_parts):
    m = GPT(GPTConfig(n_layer=8, n_head=2, n_embd=32, vocab_size=0, n_classes=3, img_size=16, patch_size=8))
    m.freeze('all')  # freeze() defines the whole frozen set: earlier calls leave no trace
    m.freeze(spec)
    for name, p in m.named_parameters():
        parts = name.split('.')
        if parts[0] == 'transformer' and parts[1] == 'h':
            assert p.requires_grad == (int(parts[2]) not in frozen_blocks), name
        else:
            assert p.requires_grad == ((parts[1] if parts[0] == 'transformer' else parts[0]) not in frozen_parts), name


@pytest.mark.parametrize('spec', ['0-9', '5-5', '6-2', '8', 'wte', 'blocks', '', 'none,1', '0-', '-1'])
def test_bad_freeze_specs_say_what_is_valid(spec):
    m = GPT(GPTConfig(n_layer=8, n_head=2, n_embd=32, vocab_size=0, n_classes=3, img_size=16, patch_size=8))
    with pytest.raises(UserError, match=r"bad --freeze item .*0 <= A < B <= 8.*wpe, ln_f, patch, head, all"):
        m.freeze(spec)


def test_frozen_parameters_do_not_move_trainable_ones_do(capsys):
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=4, n_head=2, n_embd=32, vocab_size=0, n_classes=3, img_size=16, patch_size=8, dropout=0.1))
    m.freeze('0-2,wpe')
    assert 'freeze: blocks 0-1 (2 of 4), wpe;' in capsys.readouterr().out
    opt = m.configure_optimizers(0.05, 1e-2, (0.9, 0.95), 'cpu')
    assert sum(p.numel() for g in opt.param_groups for p in g['params']) == sum(p.numel() for p in m.parameters() if p.requires_grad)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(m(torch.randn(8, 3, 16, 16)), torch.randint(0, 3, (8,)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for k, v in m.state_dict().items():
        frozen = k.startswith(('transformer.h.0.', 'transformer.h.1.', 'transformer.wpe'))
        assert torch.equal(v, before[k]) == frozen, k


def test_optimizer_decays_matrices_only(capsys):
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=0, n_classes=3, img_size=16, patch_size=8))
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() == 1 for p in no_decay['params'])
    assert {id(m.transformer.wpe.weight), id(m.patch.weight), id(m.head.weight)} <= {id(p) for p in decay['params']}
    assert 'fused=False' in capsys.readouterr().out


def test_generate_with_byte_level_encoding(hf_dir):
    hf, path = hf_dir
    ours = GPT.from_pretrained(path).eval()
    enc = model.byte_encoding()
    idx = torch.tensor([enc.encode('Hello')])
    out = ours.generate(idx, 12, temperature=1e-4, top_k=5)  # ~greedy
    assert out.shape == (1, 5 + 12) and out[0, :5].tolist() == enc.encode('Hello')
    # greedy decoding with transformers gives the same continuation
    ref = hf.generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert out.tolist() == ref.tolist()
    assert 0 <= out.max() < 300


def test_model_cli_samples_from_a_local_dir(hf_dir):
    _, path = hf_dir
    r = subprocess.run([sys.executable, 'model.py', path, 'Hello'], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'byte-level tokens' in r.stdout and r.stdout.count('---\nHello') == 2
    r = subprocess.run([sys.executable, 'model.py', '/no/such/dir'], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: no weights '/no/such/dir'") and 'Traceback' not in r.stderr
