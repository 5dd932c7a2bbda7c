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


# ---------------------------------------------------------------- data.py
import bridge  # noqa: E402
import data  # noqa: E402


def make_folder(root, n_classes=4, n_train=32, n_val=16, size=16, seed=0, noise=40):
    """An ImageNet-style tree of PNGs: class k is a colour (k-th row of a fixed palette) plus pixel noise."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    palette = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40], [40, 200, 200], [200, 40, 200]])
    for split, n in (('train', n_train), ('val', n_val)):
        for k in range(n_classes):
            os.makedirs(os.path.join(root, split, f'class{k}'), exist_ok=True)
            for i in range(n):
                img = np.clip(palette[k] + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(root, split, f'class{k}', f'{i}.png'))
    return str(root)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('img') / 'colors')


def test_random_labels_are_seeded_fixed_and_uniform():
    true = torch.arange(10).repeat(1000)  # 10,000 examples, 10 classes
    a = data.random_labels(true, 10, 1.0, seed=0)
    assert torch.equal(a, data.random_labels(true, 10, 1.0, seed=0))        # same seed, same labels
    assert not torch.equal(a, data.random_labels(true, 10, 1.0, seed=1))
    counts = torch.bincount(a, minlength=10).float()
    assert counts.min() > 900 and counts.max() < 1100                       # uniform over all classes ...
    assert 0.08 < (a == true).float().mean() < 0.12                          # ... independent of the truth (~1/10 agree)
    joint = torch.bincount(true * 10 + a, minlength=100).view(10, 10).float()
    assert joint.min() > 60 and joint.max() < 145                            # every (true, random) pair ~100 times
    for fraction in (0.0, 0.15, 0.3):
        b = data.random_labels(true, 10, fraction, seed=0)
        changed = b != true
        assert abs(changed.float().mean() - fraction * 0.9) < 0.02           # a fraction f is redrawn, 1/10 by chance the same
    assert torch.equal(data.random_labels(true, 10, 0.0, seed=0), true)
    assert torch.equal(true, torch.arange(10).repeat(1000))                  # the input is not modified


def test_random_labels_wrong_mode_is_the_authors_always_wrong():
    true = torch.arange(10).repeat(500)
    w = data.random_labels(true, 10, 1.0, seed=0, wrong=True)
    assert (w != true).all()
    counts = torch.bincount(true * 10 + w, minlength=100).view(10, 10)
    assert counts.diagonal().eq(0).all() and (counts + torch.eye(10, dtype=torch.long) * 100).min() > 25
    with pytest.raises(UserError, match=r'fraction 1.5 is not in \[0, 1\]'):
        data.random_labels(true, 10, 1.5, seed=0)


def test_folder_in_memory_and_streamed_give_the_same_batches(folder):
    a = data.load_dataset('folder', folder, 16, 'cpu', memory_gb=1.0, num_workers=0)
    b = data.load_dataset('folder', folder, 16, 'cpu', memory_gb=0.0, num_workers=0)
    assert isinstance(a['train'][0], torch.Tensor) and not isinstance(b['train'][0], torch.Tensor)
    assert a['train'][0].shape == (128, 3, 16, 16) and a['train'][0].dtype == torch.uint8
    assert a['classes'] == ['class0', 'class1', 'class2', 'class3'] and torch.equal(a['test'][1], b['test'][1])
    for (xa, ya), (xb, yb) in zip(data.train_batches(*a['train'], 24, start=3, seed=5), data.train_batches(*b['train'], 24, start=3, seed=5)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        break
    # the red class is red: images really come with their labels
    x, y = a['train'][0].float(), a['train'][1]
    assert (x[y == 0, 0].mean() > 150) and (x[y == 0, 1].mean() < 90)


def test_train_batches_are_epochs_sharded_and_resumable():
    images, labels = torch.arange(50).view(50, 1, 1, 1).expand(50, 3, 2, 2).to(torch.uint8), torch.arange(50)
    it = data.train_batches(images, labels, 8, seed=0)
    epoch0 = torch.cat([next(it)[1] for _ in range(6)])                      # 6 batches of 8 = 48 of 50
    assert len(set(epoch0.tolist())) == 48
    epoch1 = torch.cat([next(it)[1] for _ in range(6)])
    assert not torch.equal(epoch0, epoch1)                                   # a fresh permutation each epoch
    later = data.train_batches(images, labels, 8, start=7, seed=0)           # resume at micro-batch 7
    assert torch.equal(next(later)[1], epoch1[8:16])
    x, y = next(data.train_batches(images, labels, 8, seed=0))
    assert torch.equal(x[:, 0, 0, 0].long(), y)                              # images and labels stay paired
    r0 = next(data.train_batches(images, labels, 8, seed=0, rank=0, world=2))[1]
    shard0 = set(torch.cat([b[1] for b, _ in zip(data.train_batches(images, labels, 8, seed=0, rank=0, world=2), range(3))]).tolist())
    shard1 = set(torch.cat([b[1] for b, _ in zip(data.train_batches(images, labels, 8, seed=0, rank=1, world=2), range(3))]).tolist())
    assert len(shard0) == len(shard1) == 24 and not shard0 & shard1 and set(r0.tolist()) <= shard0
    evaluated = torch.cat([b[1] for r in range(3) for b in data.eval_batches(images, labels, 7, rank=r, world=3)])
    assert sorted(evaluated.tolist()) == list(range(50))                     # eval covers every example once


def test_augment_crop_is_a_pixel_shift_or_its_mirror():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1) / 255  # normalization that undoes /255
    out = data.augment(x, 'crop', 12, zero, one)
    padded = torch.nn.functional.pad(x.float(), (4, 4, 4, 4))
    found = set()
    for b in range(16):
        views = {(dy, dx, f): (padded[b, :, 4 + dy:16 + dy, 4 + dx:16 + dx].flip(-1) if f else padded[b, :, 4 + dy:16 + dy, 4 + dx:16 + dx])
                 for dy in range(-4, 5) for dx in range(-4, 5) for f in (0, 1)}
        match = [k for k, v in views.items() if (v - out[b]).abs().max() < 1e-3]
        assert match, f'image {b} is not a shifted (mirrored) copy'
        found.add(match[0][2])
    assert found == {0, 1}                                                   # both flipped and unflipped occur
    torch.testing.assert_close(data.augment(x, 'none', 12, zero, one), x.float(), atol=1e-3, rtol=0)


def test_augment_rrc_crops_scales_and_flips():
    # a horizontal ramp 0..255: a crop of area fraction >= 0.2 spans a sub-range, a flip reverses the slope
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(64, 3, 32, 32).contiguous()
    torch.manual_seed(0)
    out = data.augment(ramp, 'rrc', 24, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1) / 255)
    assert out.shape == (64, 3, 24, 24)
    slope = out[:, 0, 12, -3] - out[:, 0, 12, 2]
    assert (slope > 0).sum() > 15 and (slope < 0).sum() > 15                # about half mirrored
    width = slope.abs() / 255 * 24 / 19                                      # the fraction of the side each crop spans
    assert width.min() > 0.15 and width.max() <= 1.05 and width.std() > 0.1  # varied crops, never beyond the image
    with pytest.raises(UserError, match="unknown aug 'flip'"):
        data.augment(ramp, 'flip', 24, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))


def test_cifar_loading_and_offline_message(tmp_path, monkeypatch):
    class FakeCIFAR:  # torchvision's interface: .data (N, 32, 32, 3) uint8, .targets, .classes
        url, filename, base_folder = 'https://example/cifar.tar.gz', 'cifar.tar.gz', 'cifar-batches'

        def __init__(self, root, train, download):
            n = 20 if train else 10
            self.data = (torch.arange(n).view(n, 1, 1, 1) * torch.ones(n, 32, 32, 3)).to(torch.uint8).numpy()
            self.targets, self.classes = [i % 10 for i in range(n)], [str(i) for i in range(10)]
    monkeypatch.setitem(data.CIFAR, 'cifar10', FakeCIFAR)
    d = data.load_dataset('cifar10', str(tmp_path), 224, 'cpu')
    assert d['train'][0].shape == (20, 3, 32, 32) and d['train'][0][7].eq(7).all() and d['test'][1].tolist() == list(range(10))
    torch.testing.assert_close(d['mean'].flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    # the real class, offline: a refused connection stands for no network
    import torchvision
    monkeypatch.setattr(torchvision.datasets.CIFAR100, 'url', 'http://127.0.0.1:9/cifar-100-python.tar.gz')
    with pytest.raises(UserError, match=r'cannot get cifar100 into .*offline\? put cifar-100-python.tar.gz \(from http'):
        data.load_dataset('cifar100', str(tmp_path / 'c100'), 224, 'cpu')


def test_folder_errors_show_the_layout(tmp_path, folder):
    with pytest.raises(UserError, match=r'no image folder at .*/nowhere/train .*expected DATA_DIR/train/<class>/<image>'):
        data.load_dataset('folder', str(tmp_path / 'nowhere'), 16, 'cpu', num_workers=0)
    import shutil
    shutil.copytree(folder, tmp_path / 'f')
    shutil.rmtree(tmp_path / 'f' / 'val' / 'class3')
    with pytest.raises(UserError, match=r'train and val hold different class folders'):
        data.load_dataset('folder', str(tmp_path / 'f'), 16, 'cpu', num_workers=0)


# ---------------------------------------------------------------- bridge.py
TINY = ['--init_from', 'scratch', '--n_layer', '2', '--n_head', '2', '--n_embd', '64', '--img_size', '16',
        '--patch_size', '4', '--device', 'cpu', '--compile', 'False', '--num_workers', '0', '--log_interval', '5']


def run(folder, out, *args):
    """bridge.py in this process; returns the final metrics."""
    return bridge.main(['--dataset', 'folder', '--data_dir', folder, '--out_dir', str(out), *TINY, *args])


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]


def test_flags_both_forms_types_and_errors():
    cfg, given = bridge.parse_flags(bridge.FLAGS, ['--lr', '3e-4', '--batch_size=8', '--compile=false', '--wandb',
                                                   '--freeze', '0-5', '--warmup_epochs', '2'], bridge.CHOICES)
    assert (cfg['lr'], cfg['batch_size'], cfg['compile'], cfg['wandb'], cfg['freeze'], cfg['warmup_epochs']) == (3e-4, 8, False, True, '0-5', 2.0)
    assert given == {'lr', 'batch_size', 'compile', 'wandb', 'freeze', 'warmup_epochs'} and cfg['epochs'] == 400
    for argv, message in [(['--lerning_rate', '1'], r"unknown flag '--lerning_rate'"), (['--batchsize=4'], r'did you mean --batch_size'),
                          (['--batch_size', 'big'], r"--batch_size 'big': expected an integer"),
                          (['--compile', 'maybe'], r"--compile 'maybe': expected True or False"),
                          (['--stage', 'bridg'], r"--stage 'bridg' is not one of bridge, finetune, eval; did you mean bridge"),
                          (['--lr'], r'--lr needs a value'), (['lr=3'], r"unknown flag 'lr=3'")]:
        with pytest.raises(UserError, match=message):
            bridge.parse_flags(bridge.FLAGS, argv, bridge.CHOICES)


def test_learns_real_labels_but_only_memorizes_random_ones(folder, tmp_path):
    real = run(folder, tmp_path / 'real', '--stage', 'finetune', '--max_iters', '40', '--batch_size', '32', '--lr', '2e-3',
               '--warmup_epochs', '1', '--aug', 'crop')
    assert real['test_acc'] >= 0.95 and real['train_acc'] > 0.8
    rand = run(folder, tmp_path / 'rand', '--stage', 'bridge', '--max_iters', '240', '--batch_size', '32', '--lr', '2e-3',
               '--warmup_epochs', '1', '--aug', 'none', '--dropout', '0', '--label_smoothing', '0', '--eval_interval', '40')
    m = metrics(tmp_path / 'rand')
    assert m[0]['train_acc'] < 0.45 and rand['train_acc'] > 0.7      # memorizes the random labels ...
    assert all(r['test_acc'] <= 0.45 for r in m)                      # ... learning nothing about the true ones
    ckpt = torch.load(tmp_path / 'rand' / 'ckpt.pt', weights_only=True)
    assert torch.equal(ckpt['train_labels'], data.random_labels(ckpt['train_labels'].new_tensor([0] * 32 + [1] * 32 + [2] * 32 + [3] * 32), 4, 1.0, 0))
    assert set(m[-1]) >= {'iter', 'epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'lr', 'elapsed_s'}
    assert json.load(open(tmp_path / 'rand' / 'config.json'))['random_label_fraction'] == -1.0


def test_bridge_then_finetune_hand_off(folder, tmp_path, capsys):
    run(folder, tmp_path / 'b', '--stage', 'bridge', '--max_iters', '6', '--batch_size', '16', '--patch_size', '8')
    b = torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=True)['model']
    three = make_folder(tmp_path / 'three', n_classes=3, n_train=8, n_val=4)
    capsys.readouterr()
    # stage 2 on another dataset: patch size and image size come from the checkpoint, the head is new
    bridge.main(['--stage', 'finetune', '--init_from', str(tmp_path / 'b' / 'ckpt.pt'), '--dataset', 'folder', '--data_dir', three,
                 '--out_dir', str(tmp_path / 'f'), '--freeze', '0-1,wpe', '--max_iters', '2', '--batch_size', '8',
                 '--device', 'cpu', '--compile', 'False', '--num_workers', '0'])
    assert 'new 3-class head' in capsys.readouterr().out
    f = torch.load(tmp_path / 'f' / 'ckpt.pt', weights_only=True)
    assert f['model_config']['patch_size'] == 8 and f['config']['img_size'] == 16 and f['model']['head.weight'].shape == (3, 64)
    for k, v in f['model'].items():
        if k.startswith(('transformer.h.0.', 'transformer.wpe')):
            assert torch.equal(v, b[k]), k                                 # frozen: still the bridge weights
        elif k.startswith('transformer.h.1.mlp.c_fc'):
            assert not torch.equal(v, b[k]), k                             # trained further
    assert f['train_labels'].tolist() == [0] * 8 + [1] * 8 + [2] * 8      # finetune: the true labels
    e = bridge.main(['--stage', 'eval', '--init_from', str(tmp_path / 'f' / 'ckpt.pt'), '--dataset', 'folder', '--data_dir', three,
                     '--device', 'cpu', '--num_workers', '0'])
    assert abs(e['test_acc'] - f['metrics']['test_acc']) < 1e-6


def test_pretrained_partial_bridge_keeps_frozen_blocks_bit_identical(folder, tmp_path):
    hf = hf_gpt2(n_layer=3, n_head=2, n_embd=32, n_positions=32, vocab_size=50)
    hf.save_pretrained(tmp_path / 'hf')
    bridge.main(['--init_from', str(tmp_path / 'hf'), '--freeze', '0-2,wpe', '--dataset', 'folder', '--data_dir', folder,
                 '--out_dir', str(tmp_path / 'o'), '--img_size', '16', '--patch_size', '4', '--max_iters', '4', '--batch_size', '16',
                 '--device', 'cpu', '--compile', 'False', '--num_workers', '0', '--lr', '1e-2'])
    sd = torch.load(tmp_path / 'o' / 'ckpt.pt', weights_only=True)['model']
    ref = hf.state_dict()
    assert 'transformer.wte.weight' not in sd
    for k, v in sd.items():
        if k.startswith(('transformer.h.0.', 'transformer.h.1.', 'transformer.wpe')):
            w = ref[k].t() if k.endswith(model.CONV1D) else ref[k]
            assert torch.equal(v, w), k
        elif k.startswith('transformer.h.2.') and k.endswith('weight') and 'ln' not in k:
            w = ref[k].t() if k.endswith(model.CONV1D) else ref[k]
            assert not torch.equal(v, w), k


def test_resume_after_a_signal_is_bit_identical(folder, tmp_path, monkeypatch):
    args = ['--stage', 'bridge', '--max_iters', '24', '--batch_size', '16', '--eval_interval', '10', '--aug', 'rrc',
            '--lr', '3e-3', '--warmup_epochs', '0.5', '--seed', '3']
    full = run(folder, tmp_path / 'full', *args)
    real_get_lr = bridge.get_lr

    def interrupt_at_12(it, *a):  # a Ctrl-C during step 12: the run stops at step 15, its next log line
        if it == 12:
            import signal
            signal.raise_signal(signal.SIGINT)
        return real_get_lr(it, *a)
    monkeypatch.setattr(bridge, 'get_lr', interrupt_at_12)
    cut = run(folder, tmp_path / 'cut', *args)
    assert cut['iter'] == 15
    monkeypatch.setattr(bridge, 'get_lr', real_get_lr)
    with pytest.raises(UserError, match=r'cannot change --lr'):
        bridge.main(['--init_from', 'resume', '--out_dir', str(tmp_path / 'cut'), '--lr', '1'])
    resumed = bridge.main(['--init_from', 'resume', '--out_dir', str(tmp_path / 'cut'), '--device', 'cpu'])
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('full', 'cut'))
    assert a['iter'] == b['iter'] == 24
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    assert torch.equal(a['optimizer']['state'][0]['exp_avg_sq'], b['optimizer']['state'][0]['exp_avg_sq'])
    assert resumed['test_loss'] == full['test_loss'] and resumed['train_loss'] == pytest.approx(full['train_loss'], rel=1e-6)
    assert [m['iter'] for m in metrics(tmp_path / 'cut')] == [10, 15, 20, 24]
    assert json.load(open(tmp_path / 'cut' / 'config.json'))['init_from'] == 'scratch'


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(folder, tmp_path):
    run(folder, tmp_path / 'n', '--max_iters', '5', '--batch_size', '16')
    good = torch.load(tmp_path / 'n' / 'ckpt.pt', weights_only=True)['model']
    with pytest.raises(UserError, match=r'loss is nan at step 5: stopped; .*ckpt.pt keeps the last good checkpoint'):
        run(folder, tmp_path / 'n', '--max_iters', '10', '--batch_size', '16', '--lr', '1e30', '--warmup_epochs', '0')
    after = torch.load(tmp_path / 'n' / 'ckpt.pt', weights_only=True)['model']
    assert all(torch.equal(good[k], after[k]) for k in good)


def ddp_worker(rank, folder, out, port, queue):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    queue.put((rank, run(folder, out, '--max_iters', '6', '--batch_size', '8', '--eval_interval', '3')))


def test_two_process_ddp_agrees_on_metrics(folder, tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=ddp_worker, args=(r, folder, str(tmp_path / 'ddp'), port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == {**results[1], 'elapsed_s': results[0]['elapsed_s']} and results[0]['iter'] == 6
    assert [m['iter'] for m in metrics(tmp_path / 'ddp')] == [3, 6]  # written once, by rank 0
    assert json.load(open(tmp_path / 'ddp' / 'config.json'))['batch_size'] == 8


@pytest.mark.parametrize('args, message', [
    (['--freeze', '0-9'], r"bad --freeze item '0-9'.*0 <= A < B <= 2"),
    (['--data_dir', '/no/data'], r'no image folder at /no/data/train'),
    (['--init_from', '/no/weights', '--n_layer', '0', '--n_head', '0', '--n_embd', '0'], r"no weights '/no/weights'"),
    (['--init_from', 'gpt2', '--n_layer', '2'], r'--n_layer/--n_head/--n_embd shape a scratch model'),
    (['--stage', 'eval'], r'--stage eval needs --init_from a ckpt.pt'),
    (['--init_from', 'resume', '--out_dir', '/no/run'], r'no checkpoint at /no/run/ckpt.pt'),
    (['--img_size', '18'], r'img_size 18 is not a multiple of patch_size 4'),
    (['--batch_size', '1000'], r'batch_size 1000 x 1 processes exceeds the 128 training images'),
    (['--freeze', 'all,patch,head'], r'--freeze all,patch,head leaves nothing to train'),
    (['--random_label_fraction', '2'], r'fraction 2.0 is not in \[0, 1\]'),
    (['--random_label_fraction', '-0.5'], r"--random_label_fraction -0.5: must be >= 0 \(or -1: the stage's default\)"),
    (['--log_interval', '0'], r'--log_interval 0: must be at least 1'),
    (['--lr', '-1e-3'], r'--lr -0.001: must be >= 0'),
])
def test_user_errors(folder, tmp_path, args, message):
    argv = ['--dataset', 'folder', '--data_dir', folder, '--out_dir', str(tmp_path), '--max_iters', '1', *TINY]
    argv += args  # later flags win
    with pytest.raises(UserError, match=message):
        bridge.main(argv)


def test_not_a_checkpoint_and_a_checkpoint_that_does_not_fit(folder, tmp_path):
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint at all')
    with pytest.raises(UserError, match=r'cannot read checkpoint .*junk.pt'):
        bridge.main(['--stage', 'finetune', '--init_from', str(tmp_path / 'junk.pt'), '--device', 'cpu'])
    run(folder, tmp_path / 'r', '--max_iters', '1', '--batch_size', '16')
    three = make_folder(tmp_path / 'three', n_classes=3, n_train=4, n_val=2)
    with pytest.raises(UserError, match=r'ckpt.pt classifies 4 classes, folder has 3'):
        bridge.main(['--stage', 'eval', '--init_from', str(tmp_path / 'r' / 'ckpt.pt'), '--dataset', 'folder', '--data_dir', three,
                     '--device', 'cpu', '--num_workers', '0'])


def test_cli_errors_are_one_line_without_traceback(folder):
    for argv in (['--batchsize', '3'], ['--dataset', 'folder', '--data_dir', '/no/data', '--device', 'cpu']):
        r = subprocess.run([sys.executable, 'bridge.py', *argv], cwd=HERE, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and 'Traceback' not in r.stderr
        assert r.stderr.startswith('error: ') and r.stderr.count('\n') == 1, r.stderr


def test_compiled_run_matches_eager_and_saves_plain_keys(folder, tmp_path):
    """torch.compile changes the speed, not the numbers (dropout off: compiled code draws its own random bits)."""
    args = ['--max_iters', '4', '--batch_size', '24', '--eval_interval', '2', '--freeze', '0', '--dropout', '0', '--aug', 'none']
    eager = run(folder, tmp_path / 'eager', *args)
    compiled = run(folder, tmp_path / 'compiled', *args, '--compile', 'True')
    assert compiled['test_loss'] == pytest.approx(eager['test_loss'], rel=1e-4)
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True)['model'] for d in ('eager', 'compiled'))
    assert a.keys() == b.keys() and not any('_orig_mod' in k for k in b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- bench.py
def test_bench_runs_on_cpu_and_ends_with_json():
    r = subprocess.run([sys.executable, 'bench.py', '--n_layer', '2', '--n_head', '2', '--n_embd', '64', '--img_size', '16',
                        '--patch_size', '4', '--batch_size', '8', '--device', 'cpu', '--compile', 'False', '--steps', '2',
                        '--rounds', '2', '--warmup', '1'], cwd=HERE, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {'ours_img_s', 'hf_img_s', 'ratio', 'data_img_s', 'mfu'} <= out.keys()
    assert out['ours_img_s'] > 0 and out['hf_img_s'] > 0 and out['data_img_s'] > 0 and out['mfu'] is None
    assert out['ratio'] == pytest.approx(out['ours_img_s'] / out['hf_img_s'], rel=1e-2)
    assert 'ours / transformers:' in r.stdout


def test_bench_models_compute_the_same_function():
    """The benchmark is fair only if both sides are the same network: copy our weights into the HF side."""
    import bench
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=0, n_classes=10, img_size=16, patch_size=4)
    ours, theirs = GPT(cfg).eval(), bench.HFImageGPT2(cfg).eval()
    sd = {k.removeprefix('transformer.'): v for k, v in ours.state_dict().items()}
    hf_sd = {('gpt2.' + k if not k.startswith(('patch', 'head')) else k): (v.t() if k.endswith(model.CONV1D) else v)
             for k, v in sd.items()}
    missing, unexpected = theirs.load_state_dict(hf_sd, strict=False)
    assert not unexpected and all(k.startswith('gpt2.wte') for k in missing)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- analysis.py
import analysis  # noqa: E402


def assert_png_and_json(prefix):
    from PIL import Image
    with open(f'{prefix}.png', 'rb') as fh:
        assert fh.read(8) == b'\x89PNG\r\n\x1a\n'
    with Image.open(f'{prefix}.png') as im:
        assert im.size[0] > 200 and im.size[1] > 200
    with open(f'{prefix}.json') as fh:
        return json.load(fh)


@pytest.fixture(scope='module')
def bridged(folder, tmp_path_factory):
    """A tiny bridge run (100% random labels) and a real-label run, for the figures."""
    out = tmp_path_factory.mktemp('runs')
    run(folder, out / 'bridge', '--max_iters', '30', '--batch_size', '32', '--eval_interval', '10', '--lr', '3e-3')
    run(folder, out / 'real', '--stage', 'finetune', '--max_iters', '30', '--batch_size', '32', '--eval_interval', '10', '--lr', '3e-3')
    return out


def test_outlier_counts_on_a_hand_built_state_dict(tmp_path):
    sd = {'h.0.attn.c_attn.weight': torch.tensor([[0.1, 1.5, -2.0, 0.3, 0.0], [1.0, -1.0, 0.9, 3.0, 0.2]]),  # 3 beyond +-1
          'h.0.ln_1.weight': torch.tensor([1.0, 1.2, 0.8, 1.0]),                                        # 1, LayerNorm
          'h.1.mlp.c_proj.bias': torch.tensor([0.5, -1.5]),                                             # 1
          'h.1.mlp.c_fc.weight': torch.tensor([-1.0, 1.0] * 50 + [30.0]),                               # 1; and 9.4 std out
          'wte.weight': torch.tensor([[2.0, 0.0], [0.0, 0.0]]),                                         # 1, embedding
          'h.0.attn.bias': torch.ones(1, 1, 4, 4),                                                      # a mask buffer: ignored
          'step': torch.tensor(5)}                                                                      # not a weight: ignored
    torch.save(sd, tmp_path / 'hand.pt')
    r = analysis.main(['outliers', str(tmp_path / 'hand.pt'), '--out', str(tmp_path / 'o')])['models'][str(tmp_path / 'hand.pt')]
    assert r['all'] == dict(params=121, outliers=7, ratio=7 / 121, relative_outliers=1, relative_ratio=1 / 121)
    assert (r['without_layernorm_and_embeddings']['params'], r['without_layernorm_and_embeddings']['outliers']) == (113, 5)
    assert [(b['block'], b['params'], b['outliers'], b['relative_outliers']) for b in r['per_block']] == [(0, 14, 4, 0), (1, 103, 2, 1)]
    assert assert_png_and_json(tmp_path / 'o')['threshold'] == 1.0
    r = analysis.main(['outliers', str(tmp_path / 'hand.pt'), '--threshold', '2.5', '--out', str(tmp_path / 'o2')])
    assert r['models'][str(tmp_path / 'hand.pt')]['all']['outliers'] == 2                             # 3.0 and 30.0


def test_outliers_of_gpt2_checkpoints_and_runs(bridged, hf_dir, tmp_path):
    _, hf_path = hf_dir
    r = analysis.main(['outliers', hf_path, str(bridged / 'bridge'), str(bridged / 'bridge' / 'ckpt.pt'), '--out', str(tmp_path / 'o')])
    gpt2 = r['models'][hf_path]['all']
    assert gpt2['params'] == sum(p.numel() for p in GPT.from_pretrained(hf_path).parameters())
    assert gpt2['outliers'] > 0                    # the test model's weights have trained-like scale (hf_gpt2)
    assert r['models'][str(bridged / 'bridge')]['all']['outliers'] == 0   # GPT-2's init: nothing near 1 but LN gains (= 1)
    assert len(r['models'][str(bridged / 'bridge' / 'ckpt.pt')]['per_block']) == 2
    assert_png_and_json(tmp_path / 'o')


def test_run_directory_rebuilds_the_runs_step_zero(folder, tmp_path):
    """Only the head trains: every other tensor of the checkpoint must equal the rebuilt step 0, bit for bit."""
    run(folder, tmp_path / 'r', '--max_iters', '3', '--batch_size', '16', '--freeze', '0-2,wpe,ln_f,patch', '--lr', '1e-2')
    start, _, _ = analysis.load_run(str(tmp_path / 'r'), 'cpu')
    end, _, _ = analysis.load_run(str(tmp_path / 'r' / 'ckpt.pt'), 'cpu')
    s, e = start.state_dict(), end.state_dict()
    assert s.keys() == e.keys()
    for k in s:
        assert torch.equal(s[k], e[k]) == (not k.startswith('head.')), k


def test_curves_plot_every_run(bridged, tmp_path):
    r = analysis.main(['curves', str(bridged / 'bridge'), str(bridged / 'real' / 'metrics.jsonl'), '--out', str(tmp_path / 'c')])
    assert_png_and_json(tmp_path / 'c')
    assert r[str(bridged / 'bridge')]['label'] == 'bridge: scratch, 100% random labels'
    assert r[str(bridged / 'real' / 'metrics.jsonl')]['label'] == 'real: scratch, 0% random labels'
    last = metrics(bridged / 'real')[-1]
    assert r[str(bridged / 'real' / 'metrics.jsonl')]['final_test_acc'] == last['test_acc']
    with pytest.raises(UserError, match='no metrics at'):
        analysis.main(['curves', str(tmp_path)])


def test_landscape_ends_are_the_start_and_end_of_training(bridged, tmp_path, folder):
    ckpt = str(bridged / 'bridge' / 'ckpt.pt')
    r = analysis.main(['landscape', ckpt, '--grid', '5', '--batches', '1', '--batch_size', '32', '--out', str(tmp_path / 'l')])
    assert assert_png_and_json(tmp_path / 'l')['alphas'] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert len(r['loss']) == 5 and all(len(row) == 5 for row in r['loss'])
    assert r['loss'][2][2] == pytest.approx(r['loss_end']) and r['loss'][2][0] == pytest.approx(r['loss_start'])
    d = data.load_dataset('folder', folder, 16, 'cpu', num_workers=0)
    for src, key in ((ckpt, 'loss_end'), (str(bridged / 'bridge'), 'loss_start')):  # evaluated directly
        net = analysis.load_run(src, 'cpu')[0]
        x, y = analysis.images_for(net, d, 'test', 32, 'cpu')
        with torch.no_grad():
            assert r[key] == pytest.approx(torch.nn.functional.cross_entropy(net(x), y).item(), rel=1e-4)
    assert r['loss_end'] != pytest.approx(r['loss_start'], rel=1e-3)


def test_tsne_separates_classes_after_real_training(bridged, tmp_path):
    r = analysis.main(['tsne', str(bridged / 'real'), str(bridged / 'real' / 'ckpt.pt'), '--images', '64', '--out', str(tmp_path / 't')])
    assert_png_and_json(tmp_path / 't')
    before, after = r[str(bridged / 'real')], r[str(bridged / 'real' / 'ckpt.pt')]
    assert after['silhouette'] > before['silhouette'] and after['silhouette'] > 0.3   # colours are easy: trained features cluster
    assert after['intra_over_total_spread'] < before['intra_over_total_spread'] and before['images'] == 64


def write_patterns(root, kind, n=48, seed=0):
    """kind 'smooth': low-frequency grey images (patches strongly correlated: an anisotropic Sigma_x);
    'noise': independent uniform pixels (Sigma_x ~ identity). Four arbitrary classes: labels are random anyway."""
    import numpy as np
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    for split in ('train', 'val'):
        for k in range(4):
            os.makedirs(os.path.join(root, split, f'c{k}'), exist_ok=True)
            for i in range(n if split == 'train' else 4):
                if kind == 'smooth':
                    img = torch.nn.functional.interpolate(torch.rand(1, 1, 4, 4, generator=g) * 255, size=16, mode='bilinear')[0].expand(3, 16, 16)
                else:
                    img = torch.rand(3, 16, 16, generator=g) * 255
                Image.fromarray(img.permute(1, 2, 0).numpy().astype(np.uint8)).save(os.path.join(root, split, f'c{k}', f'{i}.png'))
    return str(root)


def test_alignment_rises_under_random_labels_on_anisotropic_images_only(tmp_path):
    """Theorem 4.1, measured: random-label training pulls the patch filters' covariance towards the covariance
    of the image patches (Maennel et al. 2020); with isotropic noise there is nothing to align to. The lr is high
    enough for the patch embedding to move as far as its initial norm: with a smaller move the isotropic init
    dominates Sigma_w (seeds 0-5, 400 steps: smooth 0.10-0.14 -> 0.34-0.82, noise 0.74 -> 0.63-0.67)."""
    found = {}
    for kind in ('smooth', 'noise'):
        root = write_patterns(tmp_path / kind, kind)
        run(root, tmp_path / f'run_{kind}', '--stage', 'bridge', '--max_iters', '400', '--batch_size', '32', '--lr', '1e-2',
            '--warmup_epochs', '1', '--aug', 'none', '--dropout', '0', '--label_smoothing', '0', '--eval_interval', '400')
        r = analysis.main(['alignment', str(tmp_path / f'run_{kind}'), str(tmp_path / f'run_{kind}' / 'ckpt.pt'),
                           '--images', '128', '--out', str(tmp_path / f'a_{kind}')])
        assert_png_and_json(tmp_path / f'a_{kind}')
        found[kind] = [r[str(tmp_path / f'run_{kind}')], r[str(tmp_path / f'run_{kind}' / 'ckpt.pt')]]
    (s0, s1), (n0, n1) = found['smooth'], found['noise']
    assert s1['alignment'] > 2 * s0['alignment']              # the cosine of Sigma_w and Sigma_x at least doubles
    assert s1['top_k_overlap'] > s0['top_k_overlap']           # and the leading eigenvectors move towards Sigma_x's
    assert n1['alignment'] < n0['alignment']                   # isotropic inputs: no rise


def test_analysis_errors(tmp_path, monkeypatch):
    for argv, message in [([], 'usage: python analysis.py'), (['plots', 'x'], "unknown subcommand 'plots'"),
                          (['tsne'], 'tsne needs at least one source'), (['tsne', str(tmp_path)], 'not a bridge.py run directory'),
                          (['outliers', '/no/model'], "no model '/no/model'"), (['landscape', 'a', 'b', 'c'], 'landscape takes'),
                          (['alignment', '/no/ckpt.pt'], "'/no/ckpt.pt' is neither a ckpt.pt"),
                          (['curves', 'x', '--grid', 'big'], "--grid 'big': expected an integer")]:
        with pytest.raises(UserError, match=message):
            analysis.main(argv)
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # as if it were not installed
    with pytest.raises(UserError, match='pip install matplotlib scikit-learn'):
        analysis.main(['curves', str(tmp_path)])
