"""
The specification, as tests. Offline, CPU: every checkpoint and image folder is made here (conftest.py).
Sections follow the files: configurator.py, model.py, data.py, bridge.py, checkpoint.py, analysis.py,
bench.py; all one-line user errors are one table at the end.
Run: python -m pytest -q test_bridge.py
"""
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import analysis
import bench
import bridge
import checkpoint
import configurator
import export
import harness
import data
import downloads
import model
import sample
import weights
from conftest import HERE, TINY, cli, hf_gpt2, make_folder, metrics, run, tokens, write_patterns
from configurator import UserError
from model import GPT, GPTConfig

SCRATCH = ['--init_from', 'scratch', '--model', '2x64', '--img_size', '16', '--patch_size', '4']


def strict_json(text):
    """json.loads that refuses NaN and Infinity, which Python's json accepts but JSON does not."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON: {text}"))


def relative(a, b):
    """|a - b| / |b|: how far a is from b, as a share of b."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ---------------------------------------------------------------- configurator.py: flags and --help
def test_flags_both_forms_types_and_defaults():
    c, given = configurator.parse(['--lr', '3e-4', '--batch_size=8', '--reinit_head=false', '--wandb',
                                   '--freeze', '0-5', '--warmup_epochs', '2', '--compile', 'true'], vars(bridge))
    assert (c.lr, c.batch_size, c.reinit_head, c.wandb, c.freeze, c.warmup_epochs) == (3e-4, 8, False, True, '0-5', 2.0)
    assert c.compile == 'True'                                             # a choice, in any case
    assert given == {'lr', 'batch_size', 'reinit_head', 'wandb', 'freeze', 'warmup_epochs', 'compile'}
    assert c.epochs == 400
    assert isinstance(c.warmup_epochs, float) and c.num_workers == configurator.cores()


@pytest.mark.parametrize('script', ['bridge.py', 'analysis.py', 'bench.py', 'sample.py'])
def test_help_prints_every_flag_with_its_default_and_comment(script):
    r = cli(script, '--help')
    assert r.returncode == 0 and not r.stderr, r.stderr
    module = {'bridge.py': bridge, 'analysis.py': analysis, 'bench.py': bench, 'sample.py': sample}[script]
    table = configurator.flags_of(vars(module))
    assert len(table) >= 7
    for name, (_, source, comment) in table.items():
        assert re.search(rf"^  --{name} +{re.escape(source)} +{re.escape(comment)}$", r.stdout, re.M), name
    assert r.stdout.startswith(module.__doc__.strip().splitlines()[0])


def test_short_help_exits_zero_in_process(capsys):
    with pytest.raises(SystemExit) as e:
        bridge.main(['--lr', '1', '-h'])
    assert e.value.code == 0 and '--freeze' in capsys.readouterr().out


def test_readme_points_to_help_instead_of_a_pasted_copy():
    """A fork that adds a flag changes one line: the README holds no copy of the flags to paste again."""
    readme = open(os.path.join(HERE, 'README.md')).read()
    assert '`python bridge.py --help`' in readme
    rows = configurator.help_text(vars(bridge)).split('flags (--name value or --name=value):\n')[1].splitlines()
    assert not [row for row in rows if row in readme]


class SignalsSeen(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return str(signal.getsignal(signal.SIGINT)), str(signal.getsignal(signal.SIGTERM))


def test_decoding_workers_leave_ctrl_c_to_the_main_process():
    def handler(signum, frame):
        raise configurator.Stopped(signum)
    before = signal.signal(signal.SIGINT, handler)                       # bridge.py's, which workers inherit
    try:
        loader = torch.utils.data.DataLoader(SignalsSeen(), num_workers=1, batch_size=None,
                                             worker_init_fn=data.leave_signals_to_the_main_process)
        assert list(next(iter(loader))) == [str(signal.SIG_IGN), str(signal.SIG_DFL)]
    finally:
        signal.signal(signal.SIGINT, before)
    source = open(os.path.join(HERE, 'data.py')).read()
    assert source.count('DataLoader(') == source.count('worker_init_fn=leave_signals_to_the_main_process')


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
    """The .bin layout of older HF checkpoints: `transformer.` prefix, lm_head.weight, mask buffers."""
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
    """A bare weights file (no config.json) of GPT-2 small's width: 12 heads follow from n_embd 768.
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
    """Our patch tokens through our blocks == HF GPT2Model(inputs_embeds=the same): causal, wpe added."""
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


@pytest.mark.parametrize('damage, message', [
    ('drop h.1.ln_2.bias', r'missing keys h\.1\.ln_2\.bias'),
    ('add h.0.attn.extra', r'unexpected keys h\.0\.attn\.extra'),
    ('reshape h.0.mlp.c_fc.weight', r'size mismatch for h\.0\.mlp\.c_fc\.weight'),
    ('truncate', r'cannot read .*model\.safetensors: '),
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
        blob = (tmp_path / 'model.safetensors').read_bytes()
        (tmp_path / 'model.safetensors').write_bytes(blob[:len(blob) // 2])
    with pytest.raises(UserError, match=message):
        GPT.from_pretrained(str(tmp_path))


@pytest.mark.parametrize('config, message', [
    ('garbage {', r'config.json is not JSON'),
    ('', r'config.json is not JSON'),
    ('[1, 2]', r'config.json: expected a JSON object of GPT-2.s settings, not a list'),
    (dict(n_head=None), r"config.json: n_head None is not a positive whole number"),
    (dict(n_head=0), r'config.json: n_head 0 is not a positive whole number'),
    (dict(n_head='4'), r"config.json: n_head '4' is not a positive whole number"),
    (dict(n_positions=10 ** 9), r'its config.json says n_positions 1000000000, its weights hold 64'),
    (dict(n_layer=10 ** 5), r'its config.json says n_layer 100000, its weights hold 2'),
    (dict(layer_norm_epsilon=1e-6), r"layer_norm_epsilon 1e-06 is not what this GPT-2 computes \(1e-05"),
    (dict(scale_attn_by_inverse_layer_idx=True), r'scale_attn_by_inverse_layer_idx True is not what this GPT-2'),
    (dict(n_inner=100), r"n_inner 100: GPT-2's MLP is 4 x n_embd wide"),
    ('drop n_head', r'width 64 is not an official GPT-2 size'),
])
def test_hf_configs_that_do_not_describe_this_gpt2_are_one_line(tmp_path, hf_dir, config, message):
    """Checked before anything is allocated: n_layer 1e5 would otherwise build 100,000 blocks."""
    _, src = hf_dir
    shutil.copy(os.path.join(src, 'model.safetensors'), tmp_path)
    cfg = json.load(open(os.path.join(src, 'config.json')))
    if isinstance(config, dict):
        text = json.dumps({**cfg, **config})
    elif config == 'drop n_head':
        text = json.dumps({k: v for k, v in cfg.items() if k != 'n_head'})
    else:
        text = config
    (tmp_path / 'config.json').write_text(text)
    with pytest.raises(UserError, match=message):
        GPT.from_pretrained(str(tmp_path))


@pytest.mark.parametrize('damage, message', [
    ('wpe 1-D', r'is not a GPT-2 checkpoint: no 2-D tensor wpe.weight'),
    ('h.x.foo', r'unexpected key h.x.foo \(block keys are h.<index>.<name>\)'),
])
def test_weights_of_odd_shapes_or_keys_are_one_line(tmp_path, hf_dir, damage, message):
    from safetensors.torch import load_file, save_file
    sd = {k.removeprefix('transformer.'): v for k, v in load_file(os.path.join(hf_dir[1], 'model.safetensors')).items()}
    if damage == 'wpe 1-D':
        sd['wpe.weight'] = sd['wpe.weight'].flatten()
    else:
        sd['h.x.foo'] = torch.zeros(3)
    save_file(sd, tmp_path / 'gpt2.safetensors')
    with pytest.raises(UserError, match=message):
        GPT.from_pretrained(str(tmp_path / 'gpt2.safetensors'))


def test_a_pickle_that_would_run_code_is_refused_with_torchs_reason(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('touch ' + str(tmp_path / 'pwned'),))
    torch.save({'model': Evil(), 'model_config': {}, 'config': {}}, tmp_path / 'evil.pt')
    for load in (lambda: weights.read_weights(str(tmp_path / 'evil.pt')),
                 lambda: bridge.main(['--init_from', str(tmp_path / 'evil.pt'), '--out_dir', str(tmp_path / 'o')])):
        with pytest.raises(UserError, match=r'evil.pt: it holds Python objects that are not weights, which '
                                            r'torch.load\(weights_only=True\) refuses to run \(.*GLOBAL .*system'):
            load()
    assert not os.path.exists(tmp_path / 'pwned') and not os.path.exists(tmp_path / 'o')


def test_missing_sources_and_offline_download(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"no weights '.*nope': no such file or directory; use one of gpt2"):
        GPT.from_pretrained(str(tmp_path / 'nope'))
    with pytest.raises(UserError, match=r'not a GPT-2 checkpoint directory.*config.json'):
        GPT.from_pretrained(str(tmp_path))
    # no network: a refused connection stands for it, so the test never downloads 500 MB where there is one
    monkeypatch.setattr(downloads, 'WEIGHTS_URL', 'http://127.0.0.1:9/{name}.safetensors')
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(UserError, match=r"could not download gpt2 from .*give its path instead of 'gpt2' \(--init_from "
                                        r"PATH; analysis.py and sample.py take it as a source\)"):
        GPT.from_pretrained('gpt2')
    assert not os.path.exists(tmp_path / 'hub' / 'gpt2' / 'gpt2.safetensors')  # no half-written cache entry


def test_scratch_init_is_gpt2s_and_architectures_by_name():
    m = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=256, vocab_size=0, n_classes=10, img_size=32, patch_size=4))
    sd = m.state_dict()
    assert abs(sd['transformer.h.0.attn.c_attn.weight'].std().item() - 0.02) < 0.002
    assert abs(sd['transformer.h.0.mlp.c_proj.weight'].std().item() - 0.02 / (2 * 4) ** 0.5) < 0.001
    assert sd['transformer.h.0.ln_1.weight'].eq(1).all() and sd['transformer.h.0.attn.c_attn.bias'].eq(0).all()
    assert sd['head.bias'].eq(0).all()
    assert model.architecture('gpt2-medium') == dict(n_layer=24, n_head=16, n_embd=1024)
    assert model.architecture('4x128') == dict(n_layer=4, n_head=2, n_embd=128)   # heads of 64, as in GPT-2
    assert model.architecture('2x48') == dict(n_layer=2, n_head=1, n_embd=48)


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
    m = GPT(GPTConfig(n_layer=4, n_head=2, n_embd=32, vocab_size=0, n_classes=3, img_size=16, patch_size=8,
                      dropout=0.1))
    m.freeze('0-2,wpe')
    assert 'freeze: blocks [0, 1] (2 of 4), wpe;' in capsys.readouterr().out
    opt = m.configure_optimizers(0.05, 1e-2, (0.9, 0.95))
    in_optimizer = sum(p.numel() for g in opt.param_groups for p in g['params'])
    assert in_optimizer == sum(p.numel() for p in m.parameters() if p.requires_grad)
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
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() == 1 for p in no_decay['params'])
    assert {id(m.transformer.wpe.weight), id(m.patch.weight), id(m.head.weight)} <= {id(p) for p in decay['params']}
    assert 'fused=True' in capsys.readouterr().out  # torch has the fused kernel on the CPU too


def test_generate_with_byte_level_encoding(hf_dir):
    hf, path = hf_dir
    ours = GPT.from_pretrained(path).eval()
    enc = sample.byte_encoding()
    idx = torch.tensor([enc.encode('Hello')])
    out = sample.generate(ours, idx, 12, temperature=1e-4, top_k=5)  # ~greedy
    assert out.shape == (1, 5 + 12) and out[0, :5].tolist() == enc.encode('Hello')
    ref = hf.generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)  # greedy, transformers
    assert out.tolist() == ref.tolist()
    assert 0 <= out.max() < 300


def test_sample_cli_samples_from_a_local_dir(hf_dir):
    _, path = hf_dir
    r = cli('sample.py', path, 'Hello')
    assert r.returncode == 0, r.stderr
    assert 'byte-level tokens' in r.stdout and r.stdout.count('---\nHello') == 2
    r = cli('sample.py', path, '--start', 'Hi', '--num_samples', '3', '--max_new_tokens', '5', '--top_k', '0',
            '--temperature', '1.5', '--seed', '7')
    assert r.returncode == 0 and r.stdout.count('---\nHi') == 3, r.stderr  # nanoGPT's flags
    r = cli('sample.py', '/no/such/dir')
    assert r.returncode == 1 and r.stderr.startswith("error: no weights '/no/such/dir'") and 'Traceback' not in r.stderr


# ---------------------------------------------------------------- data.py
def test_random_labels_are_seeded_fixed_and_uniform():
    true = torch.arange(10).repeat(1000)  # 10,000 examples, 10 classes
    a = data.random_labels(true, 10, 1.0, seed=0)
    assert torch.equal(a, data.random_labels(true, 10, 1.0, seed=0))        # same seed, same labels
    assert not torch.equal(a, data.random_labels(true, 10, 1.0, seed=1))
    counts = torch.bincount(a, minlength=10).float()
    assert counts.min() > 900 and counts.max() < 1100                       # uniform over all classes ...
    assert 0.08 < (a == true).float().mean() < 0.12                          # ... independent of the truth
    joint = torch.bincount(true * 10 + a, minlength=100).view(10, 10).float()
    assert joint.min() > 60 and joint.max() < 145                            # every (true, random) pair ~100 times
    for fraction in (0.0, 0.15, 0.3):
        changed = data.random_labels(true, 10, fraction, seed=0) != true
        assert abs(changed.float().mean() - fraction * 0.9) < 0.02           # 1/10 redrawn to the same class
    assert torch.equal(data.random_labels(true, 10, 0.0, seed=0), true)
    assert torch.equal(true, torch.arange(10).repeat(1000))                  # the input is not modified


def test_random_labels_wrong_mode_is_the_authors_always_wrong():
    true = torch.arange(10).repeat(500)
    w = data.random_labels(true, 10, 1.0, seed=0, wrong=True)
    assert (w != true).all()
    counts = torch.bincount(true * 10 + w, minlength=100).view(10, 10)
    assert counts.diagonal().eq(0).all() and (counts + torch.eye(10, dtype=torch.long) * 100).min() > 25


def test_folder_in_memory_and_streamed_give_the_same_batches(folder):
    workers = bridge.num_workers  # the default: this process's share of the cores
    a = data.load_dataset('folder', folder, 16, 'cpu', workers, memory_gb=1.0)
    b = data.load_dataset('folder', folder, 16, 'cpu', workers, memory_gb=0.0)
    assert isinstance(a['train'][0], torch.Tensor) and not isinstance(b['train'][0], torch.Tensor)
    assert a['train'][0].shape == (128, 3, 16, 16) and a['train'][0].dtype == torch.uint8
    assert a['classes'] == ['class0', 'class1', 'class2', 'class3'] and torch.equal(a['test'][1], b['test'][1])
    assert a['fingerprint'] == b['fingerprint'] and a['fingerprint']['train'] == 128
    batches_a = data.train_batches(*a['train'], 24, start=3, seed=5, num_workers=workers)
    batches_b = data.train_batches(*b['train'], 24, start=3, seed=5, num_workers=workers)
    for _ in range(6):  # across an epoch's end
        (xa, ya), (xb, yb) = next(batches_a), next(batches_b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x, y = a['train'][0].float(), a['train'][1]  # the red class is red: images come with their labels
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
    shards = [set(torch.cat([b[1] for b, _ in zip(data.train_batches(images, labels, 8, seed=0, rank=r, world=2),
                                                  range(3))]).tolist()) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 24 and not shards[0] & shards[1]
    eval_batches = [b for r in range(3) for b in data.eval_batches(images, labels, 7, rank=r, world=3)]
    assert {len(y) for _, y in eval_batches} == {7}                         # one shape: one compiled graph
    evaluated = torch.cat([y for _, y in eval_batches])
    assert sorted(evaluated[evaluated >= 0].tolist()) == list(range(50))     # eval covers every example once
    assert (evaluated == -1).sum() == 4 + 4 + 5  # 17, 17, 16 examples a rank, padded to 21: labelled -1


def test_augment_crop_is_a_pixel_shift_or_its_mirror():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1) / 255  # normalization that undoes /255
    out = data.augment(x, 'crop', 12, zero, one)
    padded = torch.nn.functional.pad(x.float(), (4, 4, 4, 4))
    found = set()
    for b in range(16):
        views = {(dy, dx, f): padded[b, :, 4 + dy:16 + dy, 4 + dx:16 + dx] for dy in range(-4, 5)
                 for dx in range(-4, 5) for f in (0, 1)}
        views = {k: v.flip(-1) if k[2] else v for k, v in views.items()}
        match = [k for k, v in views.items() if (v - out[b]).abs().max() < 1e-3]
        assert match, f'image {b} is not a shifted (mirrored) copy'
        found.add(match[0][2])
    assert found == {0, 1}                                                   # flipped and unflipped occur
    torch.testing.assert_close(data.augment(x, 'none', 12, zero, one), x.float(), atol=1e-3, rtol=0)


def test_augment_rrc_crops_scales_and_flips():
    # a horizontal ramp 0..255: a crop of area fraction >= 0.2 spans a sub-range, a flip reverses the slope
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(64, 3, 32, 32).contiguous()
    torch.manual_seed(0)
    out = data.augment(ramp, 'rrc', 24, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1) / 255)
    assert out.shape == (64, 3, 24, 24)
    slope = out[:, 0, 12, -3] - out[:, 0, 12, 2]
    assert (slope > 0).sum() > 15 and (slope < 0).sum() > 15                # about half mirrored
    width = slope.abs() / 255 * 24 / 19                                      # the fraction of the side spanned
    assert width.min() > 0.15 and width.max() <= 1.05 and width.std() > 0.1  # varied crops, never beyond


def test_cifar_loading_says_both_sizes(tmp_path, monkeypatch, capsys):
    class FakeCIFAR:  # torchvision's interface: .data (N, 32, 32, 3) uint8, .targets, .classes
        url, filename, base_folder = 'https://example/cifar.tar.gz', 'cifar.tar.gz', 'cifar-batches'
        train_list = test_list = []  # no files to check: nothing to download

        def __init__(self, root, train, download):
            n = 20 if train else 10
            self.data = (torch.arange(n).view(n, 1, 1, 1) * torch.ones(n, 32, 32, 3)).to(torch.uint8).numpy()
            self.targets, self.classes = [i % 10 for i in range(n)], [str(i) for i in range(10)]
    monkeypatch.setitem(downloads.CIFAR, 'cifar10', FakeCIFAR)
    d = data.load_dataset('cifar10', str(tmp_path), 224, 'cpu')
    assert d['train'][0].shape == (20, 3, 32, 32) and d['train'][0][7].eq(7).all()
    assert d['test'][1].tolist() == list(range(10))
    torch.testing.assert_close(d['mean'].flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert 'stored 32x32 on cpu, trained at 224x224' in capsys.readouterr().out


def test_folder_images_all_get_the_flag_size_and_their_true_colours(tmp_path):
    """A 2x2 image sorted first does not set the size; 16-bit and palette PNGs keep their levels."""
    root = make_folder(tmp_path / 'f', n_classes=2, n_train=4, n_val=2, size=8)
    Image.fromarray(np.full((2, 2, 3), 9, np.uint8)).save(tmp_path / 'f' / 'train' / 'class0' / '0.png')
    levels = (np.arange(14).repeat(2)[None].repeat(28, 0) * 4000).astype(np.uint16)  # 14 grey levels
    Image.fromarray(levels).save(tmp_path / 'f' / 'train' / 'class1' / 'grey16.png')
    colours = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    indices = np.arange(64, dtype=np.uint8).reshape(8, 8)
    palette = Image.fromarray(indices, mode='P')
    palette.putpalette(colours.flatten().tolist())
    palette.save(tmp_path / 'f' / 'val' / 'class1' / 'palette.png')
    d = data.load_dataset('folder', root, 12, 'cpu')
    assert d['train'][0].shape == (9, 3, 12, 12) and d['test'][0].shape == (5, 3, 12, 12)
    grey = data.decode(str(tmp_path / 'f' / 'train' / 'class1' / 'grey16.png'), 28)
    assert len(grey.unique()) == 14 and grey.max() > 200                     # not {0, 255}
    rgb = data.decode(str(tmp_path / 'f' / 'val' / 'class1' / 'palette.png'), 8)
    assert torch.equal(rgb.permute(1, 2, 0), torch.from_numpy(colours[indices]))


def test_folder_scan_skips_link_loops_and_names_bad_files(tmp_path):
    root = make_folder(tmp_path / 'f', n_classes=2, n_train=4, n_val=2)
    os.symlink('..', tmp_path / 'f' / 'train' / 'class0' / 'loop')           # a link back up: a loop
    os.symlink(tmp_path / 'f' / 'train' / 'class0', tmp_path / 'f' / 'train' / 'class0' / 'again')
    samples, classes = data.scan(os.path.join(root, 'train'))
    assert classes == ['class0', 'class1'] and len(samples) == 8             # each image once
    (tmp_path / 'f' / 'train' / 'class1' / 'empty.png').write_bytes(b'')
    (tmp_path / 'f' / 'train' / 'class1' / 'junk.jpg').write_bytes(b'not an image at all')
    for budget in (1.0, 0.0):  # in memory or streamed: decoded in full at start-up
        with pytest.raises(UserError, match=r'2 unreadable image files in .*train: class1/empty.png \(Unidentified'
                                            r'ImageError: cannot identify image file\), class1/junk.jpg$'):
            data.load_dataset('folder', root, 16, 'cpu', memory_gb=budget)
    os.makedirs(tmp_path / 'f' / 'val' / 'class2')
    with pytest.raises(UserError, match=r'class folder .*val/class2 holds no images'):
        data.scan(os.path.join(root, 'val'))


def test_a_streamed_image_that_fails_to_decode_is_named_at_start_up_or_when_it_breaks(tmp_path):
    root = make_folder(tmp_path / 'f', n_classes=2, n_train=8, n_val=2)
    path = tmp_path / 'f' / 'train' / 'class0' / '3.png'
    whole = path.read_bytes()
    path.write_bytes(whole[:60])  # the header is intact, the pixels are cut off
    with pytest.raises(UserError, match=r'1 unreadable image file in .*train: class0/3.png \(OSError: image file is '
                                        r'truncated'):
        data.load_dataset('folder', root, 16, 'cpu', memory_gb=0.0)  # streamed, but decoded once in full first
    path.write_bytes(whole)
    d = data.load_dataset('folder', root, 16, 'cpu', memory_gb=0.0)
    path.write_bytes(whole[:60])  # broken during the run
    with pytest.raises(UserError, match=r'cannot decode .*class0/3.png \(OSError: image file is truncated.*\): it '
                                        r'was readable when the run started'):
        for _ in data.train_batches(*d['train'], 4, seed=0):
            pass


def test_folders_skip_hidden_entries_and_name_pipes_bombs_and_odd_names(tmp_path, capsys):
    root = make_folder(tmp_path / 'f', n_classes=2, n_train=4, n_val=2)
    os.makedirs(tmp_path / 'f' / 'train' / '.ipynb_checkpoints')  # Jupyter's: not a class
    Image.new('RGB', (8, 8)).save(tmp_path / 'f' / 'train' / '.ipynb_checkpoints' / 'x.png')
    Image.new('RGB', (8, 8)).save(tmp_path / 'f' / 'train' / 'class0' / '._0.png')  # macOS's resource fork
    samples, classes = data.scan(os.path.join(root, 'train'))
    assert classes == ['class0', 'class1'] and len(samples) == 8
    assert 'skipping hidden folder .ipynb_checkpoints' in capsys.readouterr().out
    odd = os.fsdecode(b'\xff\xfe.png')  # a file name that is not UTF-8
    Image.new('RGB', (8, 8), (10, 20, 30)).save(os.path.join(root, 'train', 'class1', odd))
    d = data.load_dataset('folder', root, 8, 'cpu')
    assert d['train'][0].shape[0] == 9
    os.mkfifo(tmp_path / 'f' / 'val' / 'class0' / 'pipe.png')  # reading it would wait forever
    with pytest.raises(UserError, match=r'pipe.png is not a regular file \(a pipe, socket or device\)'):
        data.load_dataset('folder', root, 8, 'cpu')
    os.remove(tmp_path / 'f' / 'val' / 'class0' / 'pipe.png')
    Image.new('L', (200, 200)).save(tmp_path / 'f' / 'val' / 'class0' / 'bomb.png')
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # 40,000 pixels: twice over the limit is a bomb
        with pytest.raises(UserError, match=r'val: class0/bomb.png \(DecompressionBombError: Image size'):
            data.load_dataset('folder', root, 8, 'cpu')


def test_a_float_tiff_keeps_its_grey_levels(tmp_path):
    levels = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4).repeat(4, 0).repeat(4, 1)  # 0..1
    path = str(tmp_path / 'float.tif')
    Image.fromarray(levels, mode='F').save(path)
    x = data.decode(path, 16)
    assert x.shape == (3, 16, 16) and x.max() == 255 and len(x.unique()) == 16  # not black, not {0, 255}


def test_the_fingerprint_sees_images_swapped_between_classes(folder, tmp_path):
    a = data.load_dataset('folder', folder, 16, 'cpu')['fingerprint']
    swapped = shutil.copytree(folder, tmp_path / 'swapped')
    for i in range(5):  # same names, same sizes (PNGs of one size), other pixels in each class
        x, y = swapped / 'train' / 'class0' / f'{i}.png', swapped / 'train' / 'class1' / f'{i}.png'
        bx, by = x.read_bytes(), y.read_bytes()
        x.write_bytes(by)
        y.write_bytes(bx)
    b = data.load_dataset('folder', str(swapped), 16, 'cpu')['fingerprint']
    assert {k for k in a if a[k] != b[k]} == {'images'}
    c = data.load_dataset('folder', folder, 16, 'cpu', memory_gb=0.0)['fingerprint']
    assert c == a  # kept or streamed: the same data, the same fingerprint (a resume may move to another GPU)


def tiny_imagenet_zip(path, wnids=('n01443537', 'n01629819', 'n01641577'), n_train=6, n_val=3):
    """A small tiny-imagenet-200.zip in exactly the distributed layout: train/<wnid>/images/*.JPEG
    with <wnid>_boxes.txt, val/images/*.JPEG with val_annotations.txt, test/, wnids.txt, words.txt
    (which names more wnids than the dataset has). Class k is a colour; val is shuffled."""
    import zipfile
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    words = [f'{w}\tname {k}, the {k}th' for k, w in enumerate(wnids)] + ['n99999999\tnot in this dataset']

    def jpeg(k, seed):
        rng = np.random.default_rng(seed)
        pixels = np.clip(np.array(colours[k]) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        buf = __import__('io').BytesIO()
        Image.fromarray(pixels).save(buf, format='JPEG', quality=95)
        return buf.getvalue()
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('tiny-imagenet-200/wnids.txt', '\n'.join(reversed(wnids)) + '\n')  # not sorted
        z.writestr('tiny-imagenet-200/words.txt', '\n'.join(words) + '\n')
        for k, w in enumerate(wnids):
            z.writestr(f'tiny-imagenet-200/train/{w}/{w}_boxes.txt', '')
            for i in range(n_train):
                z.writestr(f'tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG', jpeg(k, 100 * k + i))
        order = [(i, k) for i, k in enumerate([k for k in range(len(wnids)) for _ in range(n_val)][::-1])]
        z.writestr('tiny-imagenet-200/val/val_annotations.txt',
                   ''.join(f'val_{i}.JPEG\t{wnids[k]}\t0\t0\t63\t63\n' for i, k in order))
        for i, k in order:
            z.writestr(f'tiny-imagenet-200/val/images/val_{i}.JPEG', jpeg(k, 1000 + i))
        z.writestr('tiny-imagenet-200/test/images/test_0.JPEG', jpeg(0, 9999))
    return path


def test_tiny_imagenet_loads_from_its_own_zip_layout_at_64_px(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(downloads, 'TINY_IMAGENET', 'http://127.0.0.1:9/tiny-imagenet-200.zip')  # offline
    with pytest.raises(UserError, match=r'cannot get tinyimagenet into .*none .*offline\? put tiny-imagenet-200.zip '
                                        r'\(from http://127.0.0.1:9/tiny-imagenet-200.zip\) or its extracted'):
        data.load_dataset('tinyimagenet', str(tmp_path / 'none'), 16, 'cpu')
    tiny_imagenet_zip(tmp_path / 'tiny-imagenet-200.zip')
    d = data.load_dataset('tinyimagenet', str(tmp_path), 16, 'cpu')
    assert 'extracting' in capsys.readouterr().out
    assert d['classes'] == ['name 0, the 0th', 'name 1, the 1th', 'name 2, the 2th']  # sorted wnids, words.txt
    assert d['train'][0].shape == (18, 3, 64, 64) and d['test'][0].shape == (9, 3, 64, 64)  # kept at 64 px
    assert d['test'][1].tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0]  # val labels from val_annotations.txt, by file
    red_green_blue = [d['test'][0][d['test'][1] == k].float().mean((0, 2, 3)).argmax().item() for k in range(3)]
    assert red_green_blue == [0, 1, 2]  # each val image came with its own label
    again = data.load_dataset('tinyimagenet', str(tmp_path), 16, 'cpu')  # extracted once: the same data
    assert again['fingerprint'] == d['fingerprint'] and 'extracting' not in capsys.readouterr().out
    result = bridge.main(['--dataset', 'tinyimagenet', '--data_dir', str(tmp_path), '--out_dir', str(tmp_path / 'r'),
                          *TINY, '--max_iters', '2', '--batch_size', '6'])
    assert result['iter'] == 2


def test_a_stopped_extraction_is_refused_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch, capsys):
    zipped = tiny_imagenet_zip(tmp_path / 'tiny-imagenet-200.zip')
    real = torchvision.datasets.utils.extract_archive

    def killed(archive, to):  # a part of the members, then the process is stopped
        import zipfile
        with zipfile.ZipFile(archive) as z:
            z.extractall(to, members=z.namelist()[:20])
        raise KeyboardInterrupt
    monkeypatch.setattr(torchvision.datasets.utils, 'extract_archive', killed)
    with pytest.raises(KeyboardInterrupt):
        data.load_dataset('tinyimagenet', str(tmp_path), 16, 'cpu')
    assert sorted(os.listdir(tmp_path)) == ['tiny-imagenet-200.zip']  # no half folder, no temporary one
    monkeypatch.setattr(torchvision.datasets.utils, 'extract_archive', real)
    real(str(zipped), str(tmp_path))  # what the older code left: a whole folder, then one file taken out
    os.remove(tmp_path / 'tiny-imagenet-200' / 'train' / 'n01641577' / 'images' / 'n01641577_5.JPEG')
    with pytest.raises(UserError, match=r'tiny-imagenet-200: 1 of the 34 files of tiny-imagenet-200.zip are not in '
                                        r'it \(tiny-imagenet-200/train/n01641577/images/n01641577_5.JPEG...\); '
                                        r'expected '
                                        r'Tiny-ImageNet as distributed .*: remove it, and the next run extracts'):
        data.load_dataset('tinyimagenet', str(tmp_path), 16, 'cpu')
    shutil.rmtree(tmp_path / 'tiny-imagenet-200')
    assert data.load_dataset('tinyimagenet', str(tmp_path), 16, 'cpu')['train'][0].shape[0] == 18


@pytest.mark.parametrize('edit, error', [
    ('rm val/val_annotations.txt', r'no val/val_annotations.txt; expected Tiny-ImageNet as distributed'),
    ('annotate n11111111', r"val_annotations.txt: 'val_0.JPEG n11111111' does not name an image and a wnid"),
    ('rm -r train/n01629819', r'class n01629819 of wnids.txt has no folder train/n01629819/images'),
    ('empty train/n01629819/images', r'train/n01629819/images holds no images'),
    ('empty wnids.txt', r'wnids.txt lists no classes'),
    ('rm val/images/val_4.JPEG', r'val/images/val_4.JPEG, named in val_annotations.txt, is not there'),
    ('unreadable train', r'cannot read .*train/n01443537/images of Tiny-ImageNet: Permission denied'),
])
def test_a_tiny_imagenet_folder_out_of_its_layout_is_one_line(tmp_path, monkeypatch, edit, error):
    torchvision.datasets.utils.extract_archive(str(tiny_imagenet_zip(tmp_path / 'z.zip')), str(tmp_path))
    root = tmp_path / 'tiny-imagenet-200'  # extracted by hand: no zip beside it to compare with
    verb, what = edit.split(' ', 1)
    if verb == 'rm':
        shutil.rmtree(root / what.removeprefix('-r ')) if what.startswith('-r') else os.remove(root / what)
    elif verb == 'annotate':
        (root / 'val' / 'val_annotations.txt').write_text(f'val_0.JPEG\t{what}\t0\t0\t63\t63\n')
    elif verb == 'empty' and what.endswith('images'):
        shutil.rmtree(root / what)
        os.makedirs(root / what)
        (root / what / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')  # hidden: not an image, not counted
    elif verb == 'empty':
        (root / what).write_text('\n')
    else:  # running as root, chmod 000 would not stop a read: the folder fails as it would for a user
        real = os.listdir
        monkeypatch.setattr(os, 'listdir', lambda p='.': (_ for _ in ()).throw(
            PermissionError(13, 'Permission denied', str(p))) if 'n01443537' in str(p) else real(p))
    with pytest.raises(UserError, match=error):
        data.load_dataset('tinyimagenet', str(tmp_path), 16, 'cpu')


def test_tiny_imagenet_takes_spaced_annotations_and_no_words_and_skips_hidden_files(tmp_path, capsys):
    torchvision.datasets.utils.extract_archive(str(tiny_imagenet_zip(tmp_path / 'z.zip')), str(tmp_path))
    root = tmp_path / 'tiny-imagenet-200'
    annotations = root / 'val' / 'val_annotations.txt'
    annotations.write_text(annotations.read_text().replace('\t', ' '))  # separated by spaces
    os.remove(root / 'words.txt')
    (root / 'train' / 'n01443537' / 'images' / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')  # macOS's
    d = data.load_dataset('tinyimagenet', str(tmp_path), 16, 'cpu')
    assert d['classes'] == ['n01443537', 'n01629819', 'n01641577'] and d['train'][0].shape[0] == 18
    assert d['test'][1].tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert 'no words.txt, so the classes are named by their wnids' in capsys.readouterr().out


def test_a_link_to_a_sibling_class_is_refused_and_a_file_reached_twice_counts_once(tmp_path):
    root = make_folder(tmp_path / 'f', n_classes=3, n_train=4, n_val=2)
    train = tmp_path / 'f' / 'train'
    os.symlink(train / 'class0' / '1.png', train / 'class0' / 'again.png')  # the same image, one label
    os.symlink(train / 'class0', train / 'class0' / 'sub')                  # and its folder once more
    samples, _ = data.scan(str(train))
    assert len(samples) == 12 and sum(k == 0 for _, k in samples) == 4
    os.symlink(train / 'class2', train / 'class1' / 'more')                  # a class inside another
    with pytest.raises(UserError, match=r'class2/0.png and .*class1/more/0.png are one file \(through a link\), '
                                        r'in the classes class2 and class1: a file can have one label only'):
        data.load_dataset('folder', root, 16, 'cpu')


@pytest.mark.parametrize('unreadable', ['more', 'class0'])  # a subfolder, or a class folder itself
def test_an_unreadable_folder_of_a_class_is_an_error_not_a_skip(tmp_path, monkeypatch, unreadable):
    root = make_folder(tmp_path / 'f', n_classes=2, n_train=4, n_val=2)
    os.makedirs(tmp_path / 'f' / 'train' / 'class1' / 'more')
    Image.new('RGB', (8, 8)).save(tmp_path / 'f' / 'train' / 'class1' / 'more' / 'x.png')
    real = os.scandir  # running as root, chmod 000 would not stop a read: it fails as it would for a user

    def scandir(path='.'):
        if str(path).endswith(unreadable):
            raise PermissionError(13, 'Permission denied', str(path))
        return real(path)
    monkeypatch.setattr(os, 'scandir', scandir)
    with pytest.raises(UserError, match=rf'cannot read the folder .*{unreadable}: Permission denied \(every folder '
                                        r'of a dataset must be readable, or its images would be left out\)'):
        data.scan(os.path.join(root, 'train'))  # not skipped, and not "holds no images"


def test_a_32_bit_tiff_keeps_its_top_bits_instead_of_wrapping(tmp_path):
    levels = (np.arange(256).reshape(16, 16).astype(np.int64) << 23).astype(np.int32)  # 0 .. 2**31 - 2**23
    Image.fromarray(levels).save(tmp_path / 'i32.tif')  # mode I, 32 signed bits
    x = data.decode(str(tmp_path / 'i32.tif'), 16)
    assert torch.equal(x[0], torch.arange(256, dtype=torch.uint8).view(16, 16))  # not modulo 256


def test_a_folder_of_one_small_square_size_is_kept_at_it_and_resized_on_the_device(tmp_path, capsys):
    small = make_folder(tmp_path / 'small', n_classes=2, n_train=4, n_val=2, size=8)
    d = data.load_dataset('folder', small, 16, 'cpu')
    assert d['train'][0].shape == (8, 3, 8, 8)
    assert 'stored 8x8 on cpu, trained at 16x16 (all 8x8, so kept at that size' in capsys.readouterr().out
    Image.new('RGB', (12, 8)).save(tmp_path / 'small' / 'train' / 'class0' / 'wide.png')  # one of another size
    assert data.load_dataset('folder', small, 16, 'cpu')['train'][0].shape == (9, 3, 16, 16)
    assert 'central squares, resized once when decoded' in capsys.readouterr().out


# ---------------------------------------------------------------- bridge.py: the two stages
def test_learns_real_labels_but_only_memorizes_random_ones(folder, tmp_path):
    real = run(folder, tmp_path / 'real', '--stage', 'finetune', '--max_iters', '40', '--batch_size', '32',
               '--lr', '2e-3', '--aug', 'crop')
    assert real['test_acc'] >= 0.95 and real['train_acc'] > 0.8
    rand = run(folder, tmp_path / 'rand', '--max_iters', '240', '--batch_size', '32', '--lr', '2e-3', '--aug', 'none',
               '--dropout', '0', '--label_smoothing', '0', '--eval_interval', '40')
    m = metrics(tmp_path / 'rand')
    assert m[0]['train_acc'] < 0.45 and rand['train_acc'] > 0.7      # memorizes the random labels ...
    assert all(r['test_acc'] <= 0.45 for r in m)                      # ... learning nothing about the true ones
    ckpt = torch.load(tmp_path / 'rand' / 'ckpt.pt', weights_only=True)
    true = torch.tensor([0] * 32 + [1] * 32 + [2] * 32 + [3] * 32)
    assert torch.equal(ckpt['train_labels'], data.random_labels(true, 4, 1.0, 0))
    assert set(m[-1]) >= {'iter', 'epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'lr', 'elapsed_s'}
    assert json.load(open(tmp_path / 'rand' / 'config.json'))['random_label_fraction'] == 1.0


def test_bridge_then_finetune_hand_off_and_eval_on_the_runs_own_data(folder, tmp_path, capsys):
    run(folder, tmp_path / 'b', '--max_iters', '6', '--batch_size', '16', '--patch_size', '8')
    b = torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=True)['model']
    three = make_folder(tmp_path / 'three', n_classes=3, n_train=8, n_val=4)
    capsys.readouterr()
    # stage 2 on another dataset: patch size and image size come from the checkpoint, the head is new
    bridge.main(['--stage', 'finetune', '--init_from', str(tmp_path / 'b' / 'ckpt.pt'), '--dataset', 'folder',
                 '--data_dir', three, '--out_dir', str(tmp_path / 'f'), '--freeze', '0-1,wpe', '--max_iters', '2',
                 '--batch_size', '8', '--device', 'cpu', '--compile', 'False', '--num_workers', '0'])
    assert 'a new head for 3 classes' in capsys.readouterr().out
    f = torch.load(tmp_path / 'f' / 'ckpt.pt', weights_only=True)
    assert f['model_config']['patch_size'] == 8 and f['config']['img_size'] == 16
    assert f['model']['head.weight'].shape == (3, 64)
    for k, v in f['model'].items():
        if k.startswith(('transformer.h.0.', 'transformer.wpe')):
            assert torch.equal(v, b[k]), k                                 # frozen: still the bridge weights
        elif k.startswith('transformer.h.1.mlp.c_fc'):
            assert not torch.equal(v, b[k]), k                             # trained further
    assert f['train_labels'].tolist() == [0] * 8 + [1] * 8 + [2] * 8      # finetune: the true labels
    e = bridge.main(['--stage', 'eval', '--init_from', str(tmp_path / 'f' / 'ckpt.pt'), '--device', 'cpu'])
    assert e['data_dir'] == three and e['test_acc'] == pytest.approx(f['history'][-1]['test_acc'], abs=1e-6)
    assert strict_json(capsys.readouterr().out.strip().splitlines()[-1])['dataset'] == 'folder'


def test_the_hand_off_keeps_the_bridges_data_and_says_what_it_froze(folder, tmp_path, capsys):
    """Stage 2 from a bridge on a folder, without --dataset: the folder, not a CIFAR download."""
    run(folder, tmp_path / 'b', '--max_iters', '4', '--batch_size', '16', '--freeze', '0')
    capsys.readouterr()
    args = ['--stage', 'finetune', '--init_from', str(tmp_path / 'b' / 'ckpt.pt'), '--max_iters', '2',
            '--batch_size', '16', '--device', 'cpu', '--compile', 'False', '--num_workers', '0']
    bridge.main([*args, '--out_dir', str(tmp_path / 'f')])
    out = capsys.readouterr().out
    assert f"its run's --dataset folder and --data_dir {folder} (give the flag for other data)" in out
    assert 'its bridge stage froze 0; --freeze none now' in out
    f = torch.load(tmp_path / 'f' / 'ckpt.pt', weights_only=True)
    assert (f['config']['dataset'], f['config']['data_dir']) == ('folder', folder)
    assert f['data'] == torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=True)['data']
    bridge.main([*args, '--out_dir', str(tmp_path / 'g'), '--freeze', '0', '--data_dir', folder])
    out = capsys.readouterr().out
    assert "its run's --dataset folder (give the flag" in out and 'froze 0; kept frozen' in out


def test_a_run_made_before_a_new_flag_resumes_with_its_default(folder, tmp_path):
    """A fork adds one flag line to bridge.py and nothing else: the runs made before resume, and say so;
    a value other than the default is refused, as any change to a run is."""
    fork = tmp_path / 'fork'
    fork.mkdir()
    for name in os.listdir(HERE):
        if name.endswith('.py'):
            shutil.copy(os.path.join(HERE, name), fork / name)
    args = ['bridge.py', '--dataset', 'folder', '--data_dir', folder, '--out_dir', str(tmp_path / 'r'), *TINY,
            '--batch_size', '16', '--eval_interval', '2']
    first = subprocess.run([sys.executable, *args, '--max_iters', '2'], cwd=fork, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    source = (fork / 'bridge.py').read_text()
    line = "redraw_labels = False          # a fork's new flag: draw new random labels every epoch\n"
    (fork / 'bridge.py').write_text(source.replace('wandb = False ', line + 'wandb = False ', 1))
    more = subprocess.run([sys.executable, *args, '--max_iters', '4', '--init_from', 'resume'], cwd=fork,
                          capture_output=True, text=True)
    assert more.returncode == 0, more.stderr
    assert f"{tmp_path / 'r'}/ckpt.pt predates --redraw_labels False: the run resumes with its default" in more.stdout
    assert 'done: bridge finished at step 4' in more.stdout
    changed = subprocess.run([sys.executable, *args, '--max_iters', '6', '--init_from', 'resume', '--redraw_labels'],
                             cwd=fork, capture_output=True, text=True)
    assert changed.returncode == 1 and "--redraw_labels True is not the run's False" in changed.stderr


def test_choices_come_from_the_flags_own_comment():
    assert configurator.choices_of('rrc', 'rrc: RandomResizedCrop | crop: pad-4 crop | none') == ('rrc', 'crop', 'none')
    assert configurator.choices_of('bridge', bridge_comment('stage')) == ('bridge', 'finetune', 'eval')
    assert configurator.choices_of('auto', 'auto (cuda, else cpu), cuda, cuda:N or cpu') is None    # no ' | '
    assert configurator.choices_of('x', 'a | b') is None                   # the default is not listed: free text
    assert configurator.choices_of(3, '3 | 4') is None                     # numbers are typed, not listed
    with pytest.raises(UserError, match=r"--aug 'rc' is not one of rrc, crop, none; did you mean rrc\?"):
        configurator.parse(['--aug', 'rc'], vars(bridge))
    with pytest.raises(UserError, match=r"--dataset 'cifar' is not one of cifar10, cifar100, tinyimagenet, folder"):
        harness.configure(['--dataset', 'cifar'], vars(bridge))
    assert tuple(data.DATASETS) == ('cifar10', 'cifar100', 'tinyimagenet', 'folder')


def bridge_comment(name):
    return configurator.flags_of(vars(bridge))[name][2]


def test_pretrained_partial_bridge_keeps_frozen_blocks_bit_identical(folder, tmp_path):
    hf = hf_gpt2(n_layer=3, n_head=2, n_embd=32, n_positions=32, vocab_size=50)
    hf.save_pretrained(tmp_path / 'hf')
    bridge.main(['--init_from', str(tmp_path / 'hf'), '--freeze', '0-2,wpe', '--dataset', 'folder',
                 '--data_dir', folder, '--out_dir', str(tmp_path / 'o'), '--img_size', '16', '--patch_size', '4',
                 '--max_iters', '4', '--batch_size', '16', '--device', 'cpu', '--compile', 'False',
                 '--num_workers', '0', '--lr', '1e-2'])
    sd = torch.load(tmp_path / 'o' / 'ckpt.pt', weights_only=True)['model']
    ref = hf.state_dict()
    assert 'transformer.wte.weight' not in sd
    for k, v in sd.items():
        w = ref.get(k, None)
        w = w.t() if w is not None and k.endswith(model.CONV1D) else w
        if k.startswith(('transformer.h.0.', 'transformer.h.1.', 'transformer.wpe')):
            assert torch.equal(v, w), k
        elif k.startswith('transformer.h.2.') and k.endswith('weight') and 'ln' not in k:
            assert not torch.equal(v, w), k


def test_short_runs_warm_up_for_a_tenth_and_reach_the_peak(folder, tmp_path, capsys):
    c = harness.configure(['--max_iters', '20', '--out_dir', str(tmp_path / 'x'), '--lr', '1e-3'], vars(bridge))[0]
    total, warmup = bridge.schedule(c, per_epoch=45.0)           # 5 warmup epochs = 225 steps of a 20-step run
    assert (total, warmup) == (20, 2) and 'more than a tenth' in capsys.readouterr().out
    lrs = [bridge.lr_at(it, c, warmup, total) for it in range(total)]
    c = harness.configure(['--max_iters', '20', '--warmup_epochs', '1e308', '--out_dir', str(tmp_path / 'z')],
                          vars(bridge))[0]
    assert bridge.schedule(c, per_epoch=45.0) == (20, 2)         # finite, if absurd: capped like any other
    c = harness.configure(['--epochs', '400', '--out_dir', str(tmp_path / 'y')], vars(bridge))[0]
    assert bridge.schedule(c, per_epoch=781.0) == (312400, 3905)  # the paper's run keeps its 5 epochs
    run(folder, tmp_path / 'r', '--max_iters', '10', '--batch_size', '16', '--log_interval', '1', '--lr', '1e-3')
    printed = [float(x) for x in re.findall(r'\| lr ([0-9.e+-]+) \|', capsys.readouterr().out)]
    assert len(printed) == 10 and max(printed) == pytest.approx(1e-3, rel=1e-2)


@pytest.mark.parametrize('compiled', ['False', 'True'])
def test_two_process_ddp_agrees_on_metrics(folder, tmp_path, compiled):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=ddp_worker, args=(r, folder, str(tmp_path / 'ddp'), port, queue, compiled))
             for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=1200) for _ in procs)  # a busy machine: minutes
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == {**results[1], 'elapsed_s': results[0]['elapsed_s']} and results[0]['iter'] == 6
    assert [m['iter'] for m in metrics(tmp_path / 'ddp')] == [3, 6]  # written once, by rank 0
    assert json.load(open(tmp_path / 'ddp' / 'config.json'))['batch_size'] == 8


def ddp_worker(rank, folder, out, port, queue, compiled):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', LOCAL_WORLD_SIZE='2',
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    assert configurator.cores() == max(1, len(os.sched_getaffinity(0)) // 2)  # each rank its share
    queue.put((rank, run(folder, out, '--max_iters', '6', '--batch_size', '8', '--eval_interval', '3',
                         '--compile', compiled)))
    assert torch.get_num_threads() <= configurator.cores()


def test_a_process_whose_copy_of_the_data_differs_stops_the_job_in_one_line(folder, tmp_path):
    """Several nodes, each with its own copy of --data_dir: one that holds other images stops every rank."""
    import socket
    import torch.multiprocessing as mp
    other = make_folder(tmp_path / 'other', seed=1)                     # same layout, other pixels
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=data_worker, args=(r, [folder, other][r], str(tmp_path / 'ddp'), port, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    errors = dict(queue.get(timeout=1200) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank in (0, 1):
        assert re.fullmatch(r"folder at .* is not the same data on every process: rank 1's images differ from "
                            r"rank 0's \(every node needs the same copy\)", errors[rank]), errors[rank]
    assert not os.path.exists(tmp_path / 'ddp' / 'ckpt.pt')


def data_worker(rank, folder, out, port, queue):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', LOCAL_WORLD_SIZE='2',
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    try:
        run(folder, out, '--max_iters', '2', '--batch_size', '8')
        queue.put((rank, 'trained'))
    except UserError as e:
        queue.put((rank, str(e)))


def test_under_torchrun_the_rank_that_stops_says_why_and_the_others_end_quietly(tmp_path):
    """Rank 0 decodes first and finds a broken image; rank 1, waiting for it, ends without a traceback."""
    root = make_folder(tmp_path / 'img', n_classes=2, n_train=8, n_val=4)
    (tmp_path / 'img' / 'train' / 'class0' / 'broken.png').write_bytes(b'not a png')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        'bridge.py', '--dataset', 'folder', '--data_dir', root, '--out_dir', str(tmp_path / 'r'),
                        *TINY], cwd=HERE, capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode != 0
    assert re.search(r'^error: .*broken.png', r.stderr, re.M), r.stderr
    assert '[rank1]' not in r.stderr and 'another process stopped' not in r.stderr, r.stderr


@pytest.mark.parametrize('rank', ['0', '1'])
def test_a_process_started_by_hand_says_what_it_waits_for_and_gives_up(folder, tmp_path, rank):
    import socket
    with socket.socket() as s:  # a free port: nobody else will come
        s.bind(('127.0.0.1', 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, 'RANK': rank, 'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': port}
    start = time.time()
    r = cli('bridge.py', '--dataset', 'folder', '--data_dir', folder, '--out_dir', str(tmp_path / 'r'), *TINY,
            '--peer_timeout', '2', env=env)
    assert r.returncode == 1 and time.time() - start < 60
    assert r.stdout.splitlines()[0] == (f'rank {rank} of 2: waiting for the other 1 at 127.0.0.1:{port}, at most 2 '
                                        f's (--peer_timeout)'), r.stdout
    assert re.fullmatch(rf'error: rank {rank}: the other processes of WORLD_SIZE=2 did not join at 127.0.0.1:{port} '
                        r'within 2 s \(.*\): start all of them \(RANK 0 to 1\) with the same MASTER_ADDR and '
                        r'MASTER_PORT, or use torchrun\n', r.stderr), r.stderr
    assert not os.path.exists(tmp_path / 'r' / 'ckpt.pt')


def test_a_config_file_is_flag_lines_checked_like_flags_and_later_flags_override_it(digits, tmp_path, capsys):
    """nanoGPT's way: python bridge.py config/NAME.py [--flag value ...]; the README's CPU example is one."""
    out = tmp_path / 'smoke'
    result = bridge.main(['config/digits_bridge.py', '--data_dir', digits, '--out_dir', str(out), '--max_iters', '4',
                          '--eval_interval', '4', '--num_workers', '0'])
    c = json.load(open(out / 'config.json'))
    assert result['iter'] == 4 and c['model'] == '4x128' and c['img_size'] == 16 and c['lr'] == 1e-3
    assert c['compile'] == 'False' and c['aug'] == 'none'  # from the file; max_iters from the command line
    for text, error in (("lr = 'fast'\n", r"bad.py, line 1: --lr 'fast': expected a number"),
                        ("epoch = 3\n", r"bad.py, line 1: unknown flag 'epoch'; did you mean --epochs"),
                        ("import os\n", r"bad.py, line 1: a config file holds flag lines `name = value` only"),
                        ("lr = 1e-3 * 2\n", r"bad.py, line 1: lr's value is not a literal"),
                        ("lr = (\n", r"bad.py, line 1: not Python"),
                        ("aug = 'flip'\n", r"bad.py, line 1: --aug 'flip' is not one of rrc, crop, none")):
        (tmp_path / 'bad.py').write_text(text)
        with pytest.raises(UserError, match=error):
            bridge.main([str(tmp_path / 'bad.py'), '--out_dir', str(tmp_path / 'bad')])
    with pytest.raises(UserError, match=r'config file .*none.py: No such file or directory'):
        bridge.main([str(tmp_path / 'none.py')])
    for name in sorted(os.listdir(os.path.join(HERE, 'config'))):  # every shipped file parses as bridge.py's flags
        configurator.config_args(os.path.join(HERE, 'config', name), vars(bridge), {}, ())


@pytest.mark.parametrize('script', ['bridge.py', 'analysis.py', 'export.py', 'sample.py', 'bench.py'])
def test_a_torchvision_built_for_another_torch_is_one_line_from_every_script(tmp_path, script):
    fake = tmp_path / 'torchvision'  # what a CPU torch beside a CUDA torchvision does on import
    fake.mkdir()
    (fake / '__init__.py').write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    r = cli(script, '--help', env={**os.environ, 'PYTHONPATH': str(tmp_path)})
    assert r.returncode == 1 and r.stdout == '', r.stdout
    assert re.fullmatch(rf'error: torchvision \S+ does not work with torch {re.escape(torch.__version__)} \(operator '
                        r'torchvision::nms does not exist\): install both together in a new virtual environment: '
                        r'pip install -r requirements.txt\n', r.stderr), r.stderr


def test_a_lone_rank_says_what_is_wrong_with_its_variables():
    r = cli('bridge.py', '--device', 'cpu', env={**os.environ, 'RANK': '1'})
    assert r.returncode == 1 and r.stderr.startswith('error: RANK=1 with WORLD_SIZE=1: needs 0 <= RANK < WORLD_SIZE')


def test_compiled_run_matches_eager_and_saves_plain_keys(folder, tmp_path):
    """torch.compile changes the speed, not the numbers (dropout off: compiled code draws its own bits)."""
    args = ['--max_iters', '4', '--batch_size', '24', '--eval_interval', '2', '--freeze', '0', '--dropout', '0',
            '--aug', 'none']
    eager = run(folder, tmp_path / 'eager', *args)
    compiled = run(folder, tmp_path / 'compiled', *args, '--compile', 'True')
    assert compiled['test_loss'] == pytest.approx(eager['test_loss'], rel=1e-4)
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True)['model'] for d in ('eager', 'compiled'))
    assert a.keys() == b.keys() and not any('_orig_mod' in k for k in b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


def graphs_compiled(folder, out, *args):
    """A compiled run in this process -> (its metrics, the graphs dynamo compiled for it)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    result = run(folder, out, '--compile', 'True', '--dropout', '0', *args)
    return result, counters['stats']['unique_graphs']


def test_a_compiled_run_builds_one_graph_to_train_and_one_to_evaluate(folder, tmp_path, capsys):
    """64 test images in batches of 24: the last batch is padded, so it needs no graph of its own."""
    args = ['--batch_size', '24', '--eval_interval', '2']
    first, graphs = graphs_compiled(folder, tmp_path / 'r', '--max_iters', '4', *args)
    assert graphs == 2 and re.search(r'compiled in \d+\.\d s', capsys.readouterr().out)
    resumed, graphs = graphs_compiled(folder, tmp_path / 'r', '--max_iters', '8', '--init_from', 'resume', *args)
    assert graphs == 2 and [m['iter'] for m in metrics(tmp_path / 'r')] == [2, 4, 6, 8]
    eager = run(folder, tmp_path / 'eager', '--max_iters', '8', *args)  # padded the same way
    d = data.load_dataset('folder', folder, 16, 'cpu')  # all 64 test images in one batch: no padding
    net = analysis.load_run(str(tmp_path / 'eager' / 'ckpt.pt'), 'cpu')[0]
    with torch.no_grad():
        x = data.augment(d['test'][0], 'eval', 16, d['mean'], d['std'])
        logits = net(x)
    assert eager['test_acc'] == (logits.argmax(1) == d['test'][1]).float().mean().item()
    assert eager['test_loss'] == pytest.approx(torch.nn.functional.cross_entropy(logits, d['test'][1]).item(),
                                               rel=1e-5)


def test_compile_is_on_for_cuda_only_by_default_and_says_so(folder, tmp_path, capsys):
    from torch._dynamo.utils import counters
    counters.clear()
    no_compile = [a for a in TINY if a not in ('--compile', 'False')]
    bridge.main(['--dataset', 'folder', '--data_dir', folder, '--out_dir', str(tmp_path / 'r'), *no_compile,
                 '--max_iters', '2', '--batch_size', '16'])
    assert '--compile auto: off on cpu, where compiled steps ran slower than eager ones' in capsys.readouterr().out
    assert counters['stats']['unique_graphs'] == 0
    c = harness.configure(['--out_dir', str(tmp_path / 'x'), '--compile', 'false'], vars(bridge))[0]
    assert c.compile == 'False'


def test_bf16_autocast_training_learns_and_saves_float32_weights(folder, tmp_path, capsys):
    result = run(folder, tmp_path / 'r', '--stage', 'finetune', '--max_iters', '40', '--batch_size', '32',
                 '--lr', '2e-3', '--aug', 'crop', '--dtype', 'bfloat16')
    assert 'device cpu, bfloat16' in capsys.readouterr().out and result['test_acc'] >= 0.95
    ckpt = torch.load(tmp_path / 'r' / 'ckpt.pt', weights_only=True)
    assert {v.dtype for v in ckpt['model'].values()} == {torch.float32} and ckpt['scaler'] == {}


def test_float16_with_a_grad_scaler_trains_and_its_scale_resumes_bit_for_bit(folder, tmp_path, monkeypatch):
    args = [*RESUME_ARGS, '--dtype', 'float16', '--stage', 'finetune', '--aug', 'crop']
    full = run(folder, tmp_path / 'full', *args)
    real = interrupt_at(12, monkeypatch)
    with pytest.raises(configurator.Stopped):
        run(folder, tmp_path / 'cut', *args)
    monkeypatch.setattr(bridge, 'lr_at', real)
    run(folder, tmp_path / 'cut', *args, '--init_from', 'resume')
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('full', 'cut'))
    assert a['scaler'] == b['scaler'] and a['scaler']['_growth_tracker'] > 0  # the scaler's steps since a skip
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert full['test_acc'] > 0.5  # it learns the true labels


def test_dtype_auto_on_a_cpu_is_bfloat16_where_it_multiplies_natively_and_says_so(folder, tmp_path, monkeypatch,
                                                                                  capsys):
    cpu = torch.device('cpu')
    start = time.perf_counter()
    configurator.native_bf16()
    assert time.perf_counter() - start < 0.5  # asked of torch, not measured
    for native, dtype, why in ((True, torch.bfloat16, 'this CPU multiplies in bfloat16 natively'),
                               (False, torch.float32, 'this CPU has no bfloat16 multiply instructions')):
        monkeypatch.setattr(torch.cpu, 'get_capabilities', lambda: {'avx512_bf16': native, 'amx_bf16': False},
                            raising=False)
        assert configurator.autocast_dtype('auto', cpu) == dtype
        assert configurator.autocast_dtype('auto', cpu, on_cpu='float32') == torch.float32  # bench's transformers
        assert configurator.autocast_dtype('float32', cpu) == torch.float32
        run(folder, tmp_path / str(native), '--max_iters', '2', '--batch_size', '16', '--dtype', 'auto')
        assert f"device cpu, {str(dtype)[6:]} (auto: {why}), 1 process" in capsys.readouterr().out


def test_fused_adamw_takes_the_step_of_the_unfused_one(capsys):
    steps = []
    for fused in (False, True):  # torch's default AdamW, and configure_optimizers' own (fused on the CPU)
        torch.manual_seed(0)
        m = GPT(GPTConfig(n_layer=2, n_head=1, n_embd=64, vocab_size=0, n_classes=4, img_size=16, patch_size=8))
        start = {k: v.clone() for k, v in m.state_dict().items()}
        opt = m.configure_optimizers(0.05, 1e-2, (0.9, 0.999))
        assert opt.defaults['fused'] is True
        if not fused:
            groups = [dict(params=g['params'], weight_decay=g['weight_decay']) for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.999))
            assert opt.defaults['fused'] is None
        for _ in range(3):
            torch.nn.functional.cross_entropy(m(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))),
                                              torch.arange(8) % 4).backward()
            opt.step()
            opt.zero_grad()
        steps.append(m.state_dict())
    assert re.findall(r'fused=(\w+)', capsys.readouterr().out) == ['True', 'True']
    for k in steps[0]:  # 3 steps of lr 1e-2 move a weight by up to 3e-2; the two kernels round differently
        torch.testing.assert_close(steps[0][k], steps[1][k], atol=1e-4, rtol=1e-4)
    moved = [s['head.weight'] - start['head.weight'] for s in steps]
    assert moved[0].abs().max() > 1e-3 and relative(moved[1], moved[0]) < 1e-3


def test_out_of_memory_is_one_line_that_says_what_to_change(folder, tmp_path, monkeypatch):
    real = bridge.augment
    for when in ('train', 'eval'):
        def augment(x, aug, *a):
            if (aug == 'eval') == (when == 'eval'):
                raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
            return real(x, aug, *a)
        monkeypatch.setattr(bridge, 'augment', augment)
        with pytest.raises(UserError, match=r'out of memory on cpu \(\d+ GiB\) at --batch_size 16: a smaller '
                                            r'--batch_size with a larger --grad_accum keeps the images per step, and '
                                            r'so the learning rate: --batch_size 8 --grad_accum 2$'):
            run(folder, tmp_path / when, '--max_iters', '2', '--batch_size', '16')
        assert not os.path.exists(tmp_path / when)


def test_cli_errors_are_one_line_without_traceback_and_checked_before_data(tmp_path):
    """A missing --init_from is named before CIFAR would be downloaded (no network here)."""
    for argv in (['--batchsize', '3'], ['--stage', 'finetune', '--init_from', str(tmp_path / 'ckpt.pt'),
                                        '--data_dir', str(tmp_path / 'nodata'), '--device', 'cpu']):
        r = cli('bridge.py', *argv)
        assert r.returncode == 1 and 'Traceback' not in r.stderr
        assert r.stderr.startswith('error: ') and r.stderr.count('\n') == 1, r.stderr
    assert 'no checkpoint at' in r.stderr and 'ckpt.pt' in r.stderr and 'cifar' not in r.stderr
    assert not os.path.exists(tmp_path / 'nodata')


# ---------------------------------------------------------------- checkpoint.py: the run's folder
def test_a_checkpoint_that_names_the_removed_pool_and_causal_fields_still_loads(bridged, tmp_path):
    ckpt = torch.load(bridged / 'bridge' / 'ckpt.pt', weights_only=True)
    ckpt['model_config'].update(pool='last', causal=True)  # GPTConfig fields until 2026-11-30
    torch.save(ckpt, tmp_path / 'old.pt')
    e = bridge.main(['--stage', 'eval', '--init_from', str(tmp_path / 'old.pt'), '--device', 'cpu'])
    assert e['test_acc'] == pytest.approx(ckpt['history'][-1]['test_acc'], abs=1e-6)


RESUME_ARGS = ['--max_iters', '24', '--batch_size', '16', '--eval_interval', '10', '--aug', 'rrc', '--lr', '3e-3',
               '--seed', '3']


def interrupt_at(step, monkeypatch):
    """A Ctrl-C during the given step (through the schedule, which every step calls)."""
    real = bridge.lr_at

    def lr_at(it, *a):
        if it == step:
            signal.raise_signal(signal.SIGINT)
        return real(it, *a)
    monkeypatch.setattr(bridge, 'lr_at', lr_at)
    return real


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])  # bfloat16: --dtype auto on a CPU with bf16 instructions
def test_resume_after_a_signal_is_bit_identical_with_the_same_command(folder, tmp_path, monkeypatch, dtype):
    full = run(folder, tmp_path / 'full', *RESUME_ARGS, '--dtype', dtype)
    real = interrupt_at(12, monkeypatch)
    with pytest.raises(configurator.Stopped) as stopped:
        run(folder, tmp_path / 'cut', *RESUME_ARGS, '--dtype', dtype)
    cut = stopped.value.result  # a Ctrl-C during step 12 stops when it ends, with a checkpoint
    assert stopped.value.signum == signal.SIGINT and cut['iter'] == 13
    monkeypatch.setattr(bridge, 'lr_at', real)
    (tmp_path / 'cut' / 'ckpt.pt.tmp').write_bytes(b'half a checkpoint')  # a write killed earlier
    resumed = run(folder, tmp_path / 'cut', *RESUME_ARGS, '--dtype', dtype, '--init_from', 'resume')  # + resume
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('full', 'cut'))
    assert a['iter'] == b['iter'] == 24
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    assert torch.equal(a['optimizer']['state'][0]['exp_avg_sq'], b['optimizer']['state'][0]['exp_avg_sq'])
    assert resumed['test_loss'] == full['test_loss']
    assert resumed['train_loss'] == pytest.approx(full['train_loss'], rel=1e-6)
    assert [m['iter'] for m in metrics(tmp_path / 'cut')] == [10, 13, 20, 24]
    assert json.load(open(tmp_path / 'cut' / 'config.json'))['init_from'] == 'scratch'
    assert sorted(os.listdir(tmp_path / 'cut')) == ['ckpt.pt', 'config.json', 'metrics.jsonl']  # no stale .tmp


def test_timed_checkpoints_come_whatever_the_epoch_and_a_crash_after_one_resumes_bit_for_bit(folder, tmp_path,
                                                                                                monkeypatch):
    args = ['--max_iters', '12', '--batch_size', '16', '--eval_interval', '100', '--log_interval', '1', '--seed', '3']
    full = run(folder, tmp_path / 'full', *args, '--ckpt_minutes', '0')
    real = bridge.lr_at

    def slow(it, *a):  # steps 3 and 8 take 0.8 s: more than --ckpt_minutes 0.01 (0.6 s) each; step 10 crashes
        if it in (3, 8):
            time.sleep(0.8)
        if it == 10:
            raise RuntimeError('the machine went away')  # kill -9, a lost node: no checkpoint at the end
        return real(it, *a)
    monkeypatch.setattr(bridge, 'lr_at', slow)
    with pytest.raises(RuntimeError, match='the machine went away'):
        run(folder, tmp_path / 'cut', *args, '--ckpt_minutes', '0.01')
    assert [m['iter'] for m in metrics(tmp_path / 'cut')] == [4, 9]  # the minutes passed, not an epoch's end
    monkeypatch.setattr(bridge, 'lr_at', real)
    resumed = run(folder, tmp_path / 'cut', *args, '--ckpt_minutes', '0.01', '--init_from', 'resume')
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('full', 'cut'))
    assert a['iter'] == b['iter'] == 12 and resumed['test_loss'] == full['test_loss']
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert torch.equal(a['optimizer']['state'][0]['exp_avg_sq'], b['optimizer']['state'][0]['exp_avg_sq'])


def test_a_run_says_what_it_will_cost_before_it_trains(folder, tmp_path, capsys):
    run(folder, tmp_path / 'r', '--max_iters', '3', '--batch_size', '16', '--grad_accum', '2')
    out = capsys.readouterr().out
    net = GPT(GPTConfig(n_layer=2, n_head=1, n_embd=64, vocab_size=0, n_classes=4, img_size=16, patch_size=4))
    flops = net.flops_per_image()
    line = re.search(r'^cost: 3 steps x 32 images = 96 images, (\S+) FLOPs to train \((\S+) an image\); each '
                     r'checkpoint ([\d.,]+) MB \(weights and AdamW.s moments\)$', out, re.M)
    assert line and float(line[1]) == pytest.approx(96 * flops, rel=0.01), out
    assert float(line[2]) == pytest.approx(flops, rel=0.01)
    n = sum(p.numel() for p in net.parameters())
    assert float(line[3]) == pytest.approx(12 * n / 1e6, abs=0.1)  # 4 bytes of weight + 8 of moments each
    assert out.index('cost:') < out.index('step 3/3') and 'done: bridge finished at step 3 after' in out
    assert '(the mean over the steps since the last evaluation, on the labels trained on) | test loss' in out
    run(folder, tmp_path / 'one', '--max_iters', '1', '--batch_size', '16')
    assert re.search(r'^1 step \(8.0 an epoch\)', capsys.readouterr().out, re.M)
    size = os.path.getsize(tmp_path / 'r' / 'ckpt.pt')
    assert 12 * n < size < 12 * n + 200_000  # the checkpoint is what it said (+ labels, history, pickling)


def test_subset_is_a_seeded_class_balanced_part_of_the_training_split(folder, tmp_path, capsys):
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '8', '--subset', '40')
    out = capsys.readouterr().out
    assert 'a seeded, class-balanced subset (seed 0): 40 of the 128 train images, 10-10 of each class' in out
    ckpt = torch.load(tmp_path / 'r' / 'ckpt.pt', weights_only=True)
    assert len(ckpt['train_labels']) == 40
    d = data.load_dataset('folder', folder, 16, 'cpu')
    streamed = data.load_dataset('folder', folder, 16, 'cpu', memory_gb=0.0)
    a, b = data.take(d, 'train', 40, 5), data.take(streamed, 'train', 40, 5)
    assert torch.equal(a['train'][1], b['train'][1]) and torch.bincount(a['train'][1]).tolist() == [10] * 4
    assert torch.equal(next(data.train_batches(*a['train'], 8))[0], next(data.train_batches(*b['train'], 8))[0])
    assert not torch.equal(a['train'][0], data.take(d, 'train', 40, 6)['train'][0])  # another seed, other images
    assert len(a['test'][1]) == len(d['test'][1])  # the test split stays whole
    run(folder, tmp_path / 't', '--max_iters', '2', '--batch_size', '8', '--test_subset', '20')
    assert '20 of the 64 test images, 5-5 of each class' in capsys.readouterr().out
    assert (metrics(tmp_path / 't')[-1]['test_acc'] * 20) % 1 == pytest.approx(0, abs=1e-9)  # of 20 images
    with pytest.raises(UserError, match=r'^--subset 400: the train split holds 128 images$'):
        run(folder, tmp_path / 'big', '--subset', '400')
    with pytest.raises(UserError, match=r"--subset 48 is not the run's 40"):
        run(folder, tmp_path / 'r', '--max_iters', '4', '--batch_size', '8', '--subset', '48', '--init_from', 'resume')


def test_a_fresh_run_never_replaces_a_run_and_a_failed_start_writes_nothing(folder, tmp_path):
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16', '--eval_interval', '1')
    before = {f: (tmp_path / 'r' / f).read_bytes() for f in os.listdir(tmp_path / 'r')}
    with pytest.raises(UserError, match=r'r holds a bridge run at step 2: continue it with --init_from resume'):
        run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16')
    assert {f: (tmp_path / 'r' / f).read_bytes() for f in os.listdir(tmp_path / 'r')} == before
    assert [m['iter'] for m in metrics(tmp_path / 'r')] == [1, 2]
    with pytest.raises(UserError, match=r'--batch_size 5000 x 1 processes exceeds the 128 training images'):
        run(folder, tmp_path / 'new', '--batch_size', '5000')
    assert not os.path.exists(tmp_path / 'new')  # nothing written before the run could start
    with pytest.raises(UserError, match=r'--batch_size 5000 x 1 processes exceeds'):
        run(folder, tmp_path / 'nested' / 'deeper' / 'run', '--batch_size', '5000')
    assert not os.path.exists(tmp_path / 'nested')  # nor the folders above it that it made


def test_resume_takes_the_runs_data_moved_but_no_other(folder, tmp_path):
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16')
    moved = shutil.copytree(folder, tmp_path / 'moved')
    resumed = run(str(moved), tmp_path / 'r', '--max_iters', '3', '--batch_size', '16', '--init_from', 'resume')
    assert resumed['iter'] == 3
    other = make_folder(tmp_path / 'other', seed=1, noise=80)  # the same classes, counts and labels
    with pytest.raises(UserError, match=r'is not the data .*r trained on: its images differ'):
        run(other, tmp_path / 'r', '--max_iters', '4', '--init_from', 'resume')
    relabelled = shutil.copytree(folder, tmp_path / 'relabelled')
    for split in ('train', 'val'):
        os.rename(relabelled / split / 'class3', relabelled / split / 'class9')
    with pytest.raises(UserError, match=r'is not the data .*r trained on: its classes, images differ'):
        run(str(relabelled), tmp_path / 'r', '--max_iters', '4', '--init_from', 'resume')


def test_divergence_never_writes_a_checkpoint_and_eval_prints_valid_json(folder, tmp_path, monkeypatch, capsys):
    args = ['--max_iters', '9', '--batch_size', '16', '--eval_interval', '3', '--log_interval', '1']
    with pytest.raises(UserError, match=r'test loss nan at step 1: stopped; in .*a, no checkpoint was written'):
        run(folder, tmp_path / 'a', *args, '--lr', '1e30', '--eval_interval', '1')
    assert not os.path.exists(tmp_path / 'a')
    real = bridge.lr_at
    monkeypatch.setattr(bridge, 'lr_at', lambda it, *a: real(it, *a) if it < 3 else 1e30)  # diverges after step 3
    with pytest.raises(UserError, match=r'loss nan at step [4-6]: stopped; in .*b, ckpt.pt keeps step 3; try a lower'):
        run(folder, tmp_path / 'b', *args)
    good = torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=True)
    assert good['iter'] == 3 and [m['iter'] for m in metrics(tmp_path / 'b')] == [3]
    bad = dict(good, model={k: v * float('nan') if k == 'head.weight' else v for k, v in good['model'].items()})
    torch.save(bad, tmp_path / 'nan.pt')
    capsys.readouterr()
    with pytest.raises(UserError, match=r'nan.pt: test loss nan: its weights diverged'):
        bridge.main(['--stage', 'eval', '--init_from', str(tmp_path / 'nan.pt'), '--device', 'cpu'])
    assert strict_json(capsys.readouterr().out.strip().splitlines()[-1])['test_loss'] is None


def test_a_second_run_into_a_held_folder_is_refused_and_a_dead_holder_blocks_nothing(folder, tmp_path):
    out = tmp_path / 'r'
    holder = subprocess.Popen([sys.executable, '-c', 'import checkpoint, sys, time; checkpoint.claim(sys.argv[1]); '
                               'print("held", flush=True); time.sleep(120)', str(out)], cwd=HERE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == 'held\n'
    for extra in ([], ['--init_from', 'resume']):  # fresh or resume: both refused while it is held
        with pytest.raises(UserError, match=rf'r is in use by another run \(pid {holder.pid} holds .*run.lock\)'):
            run(folder, out, '--max_iters', '2', '--batch_size', '16', *extra)
    holder.kill()  # kill -9: its lock file stays, its flock goes with it
    holder.wait()
    assert (out / 'run.lock').read_text().strip() == str(holder.pid)
    assert run(folder, out, '--max_iters', '2', '--batch_size', '16')['iter'] == 2
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'config.json', 'metrics.jsonl']  # the lock went with the run


def test_two_runs_started_at_once_into_one_folder_one_trains_one_is_refused(folder, tmp_path):
    out = tmp_path / 'r'
    argv = ['bridge.py', '--dataset', 'folder', '--data_dir', folder, '--out_dir', str(out), *TINY,
            '--max_iters', '300', '--batch_size', '16', '--eval_interval', '15']
    procs = [subprocess.Popen([sys.executable, *argv, '--seed', str(seed)], cwd=HERE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 1], results
    winner = [seed for seed, (rc, _) in zip((1, 2), results) if rc == 0][0]
    refused = [err for rc, err in results if rc == 1][0]
    assert re.search(r'error: .*r (is in use by another run \(pid \d+|holds a bridge run at step 300)', refused)
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ckpt['config']['seed'] == winner and ckpt['iter'] == 300 and len(ckpt['history']) == 20


def test_a_fresh_run_touches_no_file_it_did_not_write(folder, hf_dir, tmp_path):
    mine = tmp_path / 'userdir'
    mine.mkdir()
    (mine / 'thesis.tmp').write_text('two years of work')
    with pytest.raises(UserError, match=r'userdir holds files that bridge.py did not write \(thesis.tmp\)'):
        run(folder, mine, '--max_iters', '2', '--batch_size', '16')
    assert os.listdir(mine) == ['thesis.tmp'] and (mine / 'thesis.tmp').read_text() == 'two years of work'
    hf = shutil.copytree(hf_dir[1], tmp_path / 'hf')
    before = {f: (hf / f).read_bytes() for f in os.listdir(hf)}
    with pytest.raises(UserError, match=r'hf holds files that bridge.py did not write \(config.json, '
                                        r'generation_config.json, model.safetensors\)'):
        run(folder, hf, '--max_iters', '2', '--batch_size', '16')
    assert {f: (hf / f).read_bytes() for f in os.listdir(hf)} == before  # transformers still loads it
    lonely = tmp_path / 'lonely'
    lonely.mkdir()
    shutil.copy(hf / 'config.json', lonely / 'config.json')  # only our file names, but not our config
    with pytest.raises(UserError, match=r'lonely holds files that bridge.py did not write \(config.json\)'):
        run(folder, lonely, '--max_iters', '2', '--batch_size', '16')
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert run(folder, empty, '--max_iters', '2', '--batch_size', '16')['iter'] == 2  # an empty folder is fine


def flip(path, offset, n):
    b = bytearray(path.read_bytes())
    b[offset:offset + n] = bytes(x ^ 0xFF for x in b[offset:offset + n])
    path.write_bytes(bytes(b))


def test_a_damaged_checkpoint_is_refused_before_any_work(bridged, tmp_path):
    src = bridged / 'bridge' / 'ckpt.pt'
    with open(src, 'rb') as f:  # where the head's weights lie in the archive
        import zipfile
        z = zipfile.ZipFile(f)
        info = max(z.infolist(), key=lambda i: i.file_size)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for name, offset, n in (('middle', src.stat().st_size // 2 - 2000, 4000), ('tensor', start + 100, 1)):
        run_dir = tmp_path / name
        shutil.copytree(bridged / 'bridge', run_dir)
        flip(run_dir / 'ckpt.pt', offset, n)
        with pytest.raises(UserError, match=rf'cannot read .*{name}/ckpt.pt: it is damaged \(.* fails its CRC-32'):
            bridge.main(['--init_from', 'resume', '--out_dir', str(run_dir), '--device', 'cpu'])
        with pytest.raises(UserError, match=r'it is damaged'):
            bridge.main(['--stage', 'finetune', '--init_from', str(run_dir / 'ckpt.pt'), '--out_dir',
                         str(tmp_path / 'ft'), '--device', 'cpu'])
        with pytest.raises(UserError, match=r'it is damaged'):
            analysis.main(['tsne', str(run_dir / 'ckpt.pt')])
    assert not os.path.exists(tmp_path / 'ft')


def test_a_stopped_run_exits_130_or_143_even_when_its_job_ignores_sigint(folder, tmp_path):
    def stop_during_training(sig, out, **kw):
        argv = ['bridge.py', '--dataset', 'folder', '--data_dir', folder, '--out_dir', str(out), *TINY,
                '--max_iters', '100000', '--batch_size', '16', '--eval_interval', '1000']
        p = subprocess.Popen([sys.executable, *argv], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'}, **kw)
        while not p.stdout.readline().startswith('step '):
            assert p.poll() is None, p.stderr.read()
        p.send_signal(sig)
        out_text, err = p.communicate(timeout=120)
        return p.returncode, out_text, err
    rc, out_text, err = stop_during_training(signal.SIGTERM, tmp_path / 'term')
    assert rc == 143, err
    step = int(re.search(r'stopped by SIGTERM at step (\d+), with a checkpoint', out_text)[1])
    assert 'SIGTERM: the run stops with a checkpoint when this step ends (1 micro-step left)' in err
    assert torch.load(tmp_path / 'term' / 'ckpt.pt', weights_only=True)['iter'] == step
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731  (a background job: cmd &)
    rc, out_text, err = stop_during_training(signal.SIGINT, tmp_path / 'int', preexec_fn=ignore)
    assert rc == 130 and 'stopped by SIGINT at step' in out_text, err
    r = cli('bridge.py', '--dataset', 'folder', '--data_dir', folder, '--out_dir', str(tmp_path / 'term'), *TINY,
            '--init_from', 'resume', '--max_iters', str(step + 2), '--batch_size', '16', '--eval_interval', '1000')
    assert r.returncode == 0 and f'resuming the run in {tmp_path / "term"} at step {step}' in r.stdout, r.stderr


def same_command_stopped_and_run_again(launcher, folder, out, max_iters):
    """A requeued job: the very same command (--auto_resume True), stopped by SIGTERM after its first
    progress line, then run again -> the two runs' outputs."""
    argv = [sys.executable, *launcher, 'bridge.py', '--dataset', 'folder', '--data_dir', folder,
            '--out_dir', str(out), *TINY, '--max_iters', str(max_iters), '--batch_size', '8',
            '--eval_interval', '50', '--auto_resume', 'True']
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    p = subprocess.Popen(argv, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = [p.stdout.readline()]
    while not lines[-1].startswith('step '):
        assert p.poll() is None, p.stderr.read()
        lines.append(p.stdout.readline())
    p.send_signal(signal.SIGTERM)
    first = ''.join(lines) + p.communicate(timeout=300)[0]
    again = subprocess.run(argv, cwd=HERE, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    return first, again.stdout


@pytest.mark.parametrize('processes', [1, 2])
def test_the_same_command_stopped_by_sigterm_and_run_again_ends_as_an_uninterrupted_run(folder, tmp_path,
                                                                                        processes):
    launcher = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2'] if processes == 2 else []
    first, again = same_command_stopped_and_run_again(launcher, folder, tmp_path / 'cut', 60)
    step = int(re.search(r'stopped by SIGTERM at step (\d+), with a checkpoint', first)[1])
    assert f"--auto_resume: {tmp_path / 'cut'} holds no checkpoint: starting the run" in first
    assert f"--auto_resume: {tmp_path / 'cut'} holds this run at step {step}: continuing it" in again
    whole = subprocess.run([sys.executable, *launcher, 'bridge.py', '--dataset', 'folder', '--data_dir', folder,
                            '--out_dir', str(tmp_path / 'whole'), *TINY, '--max_iters', '60', '--batch_size', '8',
                            '--eval_interval', '50'], cwd=HERE, capture_output=True, text=True, timeout=600,
                           env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert whole.returncode == 0, whole.stderr
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('whole', 'cut'))
    assert a['iter'] == b['iter'] == 60 and b['world'] == processes and 0 < step < 60
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    assert torch.equal(a['optimizer']['state'][0]['exp_avg_sq'], b['optimizer']['state'][0]['exp_avg_sq'])


def test_auto_resume_refuses_another_runs_folder_and_a_changed_flag(folder, tmp_path, capsys):
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16', '--auto_resume', 'True')
    with pytest.raises(UserError, match=r"r holds a bridge run at step 2: continue it with --init_from resume"):
        run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16', '--auto_resume', 'True',
            '--stage', 'finetune')                                        # another command's run: never replaced
    with pytest.raises(UserError, match=r"continues .*r as it was: --lr 0.001 is not the run's 0.00025"):
        run(folder, tmp_path / 'r', '--max_iters', '4', '--batch_size', '16', '--auto_resume', 'True', '--lr', '1e-3')
    done = run(folder, tmp_path / 'r', '--max_iters', '4', '--batch_size', '16', '--auto_resume', 'True')
    assert done['iter'] == 4 and 'holds this run at step 2: continuing it' in capsys.readouterr().out


def test_a_dangling_ckpt_link_is_a_run_out_of_reach_never_replaced(folder, tmp_path):
    (tmp_path / 'r').mkdir()
    os.symlink(tmp_path / 'unmounted' / 'ckpt.pt', tmp_path / 'r' / 'ckpt.pt')
    (tmp_path / 'r' / 'metrics.jsonl').write_text('{"iter": 7}\n')
    with pytest.raises(UserError, match=r"r/ckpt.pt links to .*unmounted/ckpt.pt, which does not exist"):
        run(folder, tmp_path / 'r', '--max_iters', '2')
    assert os.path.islink(tmp_path / 'r' / 'ckpt.pt')
    assert (tmp_path / 'r' / 'metrics.jsonl').read_text() == '{"iter": 7}\n'        # the run's history, kept


def test_slurm_job_script_is_valid_bash_and_runs_the_same_command():
    script = open(os.path.join(HERE, 'slurm.sh')).read()
    assert subprocess.run(['bash', '-n', os.path.join(HERE, 'slurm.sh')]).returncode == 0
    for needed in ('#SBATCH --requeue', '#SBATCH --signal=B:TERM@', '--auto_resume True', '--rdzv_backend c10d',
                   'scontrol requeue'):
        assert needed in script, needed


def test_a_signal_during_start_up_stops_at_once_and_leaves_no_trace(folder, tmp_path, monkeypatch):
    def interrupted_load(*args):
        signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(harness, 'load_dataset', interrupted_load)
    before = signal.getsignal(signal.SIGINT)  # the default, or SIG_IGN under nohup / in a background job
    with pytest.raises(configurator.Stopped, match='during start-up: nothing was written'):
        run(folder, tmp_path / 'r', '--max_iters', '2')
    assert not os.path.exists(tmp_path / 'r')
    assert signal.getsignal(signal.SIGINT) is before                      # handed back to the caller


def test_a_signal_says_how_many_micro_steps_it_waits_for(folder, tmp_path, monkeypatch, capfd):
    interrupt_at(3, monkeypatch)
    with pytest.raises(configurator.Stopped) as stopped:
        run(folder, tmp_path / 'r', '--max_iters', '20', '--batch_size', '8', '--grad_accum', '3')
    assert stopped.value.result['iter'] == 4
    assert 'SIGINT: the run stops with a checkpoint when this step ends (3 micro-steps left)' in capfd.readouterr().err


def test_resume_takes_the_runs_thread_count_unless_omp_num_threads_is_set(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    threads = torch.get_num_threads()
    seen = []
    real = bridge.optimizer_step
    monkeypatch.setattr(bridge, 'optimizer_step', lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    try:
        monkeypatch.setattr(configurator, 'free_cores', lambda: 2)  # an idle machine: 2 threads
        run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16')
        assert torch.load(tmp_path / 'r' / 'ckpt.pt', weights_only=True)['threads'] == 2
        monkeypatch.setattr(configurator, 'free_cores', lambda: 1)  # a busy one: 1 would be chosen
        run(folder, tmp_path / 'r', '--max_iters', '4', '--batch_size', '16', '--init_from', 'resume')
        assert seen == [2] * 4 and 'resuming on 2 CPU threads, as the run did' in capsys.readouterr().out
        monkeypatch.setenv('OMP_NUM_THREADS', '1')
        torch.set_num_threads(1)
        run(folder, tmp_path / 'r', '--max_iters', '5', '--batch_size', '16', '--init_from', 'resume')
        assert 'the run trained on 2 CPU threads, this resume has 1' in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)


def test_a_failed_write_is_one_line_and_the_last_checkpoint_stays(folder, tmp_path, capsys):
    out = tmp_path / 'r'
    run(folder, out, '--max_iters', '4', '--batch_size', '16', '--eval_interval', '2')
    before = (out / 'ckpt.pt').read_bytes()
    os.symlink('/dev/full', out / 'ckpt.pt.tmp')  # every write there: ENOSPC, a full disk
    capsys.readouterr()
    with pytest.raises(UserError, match=r'cannot write .*r/ckpt.pt at step 6 \(No space left on device\): '
                                        r'stopped; ckpt.pt keeps step 4'):
        run(folder, out, '--max_iters', '6', '--batch_size', '16', '--init_from', 'resume')
    assert (out / 'ckpt.pt').read_bytes() == before and sorted(os.listdir(out)) == ['ckpt.pt', 'config.json',
                                                                                    'metrics.jsonl']
    assert 'saved' not in capsys.readouterr().out


@pytest.mark.parametrize('env, message', [
    (dict(WORLD_SIZE='abc'), r"WORLD_SIZE='abc': torchrun sets RANK, WORLD_SIZE and LOCAL_RANK to whole"),
    (dict(RANK='1'), r'RANK=1 with WORLD_SIZE=1: needs 0 <= RANK < WORLD_SIZE'),
    (dict(WORLD_SIZE='2'), r'WORLD_SIZE=2 without MASTER_ADDR and MASTER_PORT: start the 2 processes with torchrun'),
])
def test_torchrun_variables_that_torchrun_never_sets_are_one_line(env, message, folder, tmp_path, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match=message):
        run(folder, tmp_path / 'r', '--max_iters', '2')
    assert not os.path.exists(tmp_path / 'r')


def test_everything_offline_is_named_at_once_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(downloads, 'WEIGHTS_URL', 'http://127.0.0.1:9/{name}.safetensors')  # refused: offline
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(downloads.CIFAR['cifar10'], 'url', 'http://127.0.0.1:9/cifar-10-python.tar.gz')
    with pytest.raises(UserError, match=r'2 things need the network: \(1\) could not download gpt2-medium from .*; '
                                        r'and \(2\) cannot get cifar10 into .*data .*offline\? put cifar-10-python'):
        bridge.main(['--stage', 'bridge', '--freeze', '0-5', '--data_dir', str(tmp_path / 'data'), '--out_dir',
                     str(tmp_path / 'out'), '--device', 'cpu'])
    assert not os.path.exists(tmp_path / 'out') and not os.path.exists(tmp_path / 'data')  # no empty data/ left
    only_train = make_folder(tmp_path / 'f', n_classes=2, n_train=4, n_val=1)
    shutil.rmtree(tmp_path / 'f' / 'val')
    capsys.readouterr()
    with pytest.raises(UserError, match=r'no image folder at .*f/val'):
        run(only_train, tmp_path / 'r', '--max_iters', '2')
    assert 'decoding' not in capsys.readouterr().out  # found missing before train/ was decoded


def test_silent_decisions_are_said(folder, hf_dir, tmp_path, capsys):
    bridge.main(['--stage', 'finetune', '--init_from', hf_dir[1], '--dataset', 'folder', '--data_dir', folder,
                 '--out_dir', str(tmp_path / 'ft'), '--img_size', '16', '--patch_size', '4', '--max_iters', '2',
                 '--batch_size', '16', '--device', 'cpu', '--compile', 'False', '--num_workers', '0'])
    assert "finetune: from " + hf_dir[1] + "'s language weights, without a bridge stage" in capsys.readouterr().out
    run(folder, tmp_path / 'r', '--max_iters', '10', '--batch_size', '16', '--eval_interval', '5')
    capsys.readouterr()
    run(folder, tmp_path / 'r', '--max_iters', '20', '--batch_size', '16', '--eval_interval', '5', '--init_from',
        'resume')
    assert re.search(r'the schedule now ends at step 20: the learning rate goes from the run.s [0-9.]+e-06 \(step '
                     r'10\) to [0-9.]+e-04', capsys.readouterr().out)


# ---------------------------------------------------------------- export.py: out as a transformers GPT-2
def test_an_export_loads_in_transformers_and_gives_our_features(bridged, tmp_path):
    from safetensors.torch import load_file
    from transformers import GPT2Model
    out = tmp_path / 'hf'
    export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(out)])
    assert sorted(os.listdir(out)) == sorted(export.FILES)
    hf, info = GPT2Model.from_pretrained(str(out), output_loading_info=True)
    assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys')), info
    ours = analysis.load_run(str(bridged / 'bridge' / 'ckpt.pt'), 'cpu')[0]
    parts, cfg = load_file(out / 'image.safetensors'), json.load(open(out / 'image_config.json'))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        tokens = torch.nn.functional.conv2d(x, parts['patch.weight'], parts['patch.bias'], stride=cfg['patch_size'])
        theirs = hf.eval()(inputs_embeds=tokens.flatten(2).transpose(1, 2)).last_hidden_state[:, -1]
        torch.testing.assert_close(theirs, ours.features(x), atol=1e-5, rtol=0)
    assert cfg['classes'] == ['class0', 'class1', 'class2', 'class3'] and cfg['stage'] == 'bridge (100% random labels)'
    card = (out / 'README.md').read_text()
    assert 'no token embedding' in card and "GPT2Model.from_pretrained('" + str(out) in card
    assert re.search(r'^\| test acc \| \d+\.\d\d% \|$', card, re.M), card  # a percentage, not 0.0666666...
    code = {}
    exec(re.search(r'```python\n(.*?)```', card, re.S)[1], code)  # the card's own lines rebuild the classifier
    with torch.no_grad():
        images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg['mean'], cfg['std']))
        torch.testing.assert_close(code['classify'](list(images.numpy())),
                                   ours(data.augment(images, 'eval', 16, mean, std)), atol=1e-4, rtol=0)


def test_the_exports_processor_reproduces_its_checkpoints_accuracy_on_image_files(digits, tmp_path):
    """What a vision tower does with the export: the card's code, through the processor file, on the test PNGs."""
    result = bridge.main(['--stage', 'finetune', '--init_from', 'scratch', '--model', '2x64', '--dataset', 'folder',
                          '--data_dir', digits, '--img_size', '16', '--patch_size', '4', '--aug', 'none', '--max_iters',
                          '150', '--lr', '1e-3', '--eval_interval', '150', '--batch_size', '64', '--device', 'cpu',
                          '--compile', 'False', '--num_workers', '0', '--dtype', 'float32', '--out_dir',
                          str(tmp_path / 'ft')])
    export.main([str(tmp_path / 'ft' / 'ckpt.pt'), str(tmp_path / 'hf')])
    code = {}
    exec(re.search(r'```python\n(.*?)```', (tmp_path / 'hf' / 'README.md').read_text(), re.S)[1], code)
    files = sorted(glob.glob(os.path.join(digits, 'val', '*', '*.png')))
    classes = json.load(open(tmp_path / 'hf' / 'image_config.json'))['classes']
    truth = torch.tensor([classes.index(os.path.basename(os.path.dirname(f))) for f in files])
    with torch.no_grad():
        predicted = code['classify']([Image.open(f).convert('RGB') for f in files]).argmax(1)
    accuracy = (predicted == truth).float().mean().item()
    assert 0.3 < result['test_acc'] and abs(accuracy - result['test_acc']) <= 0.005, (accuracy, result['test_acc'])


def test_an_export_comes_back_bit_for_bit_and_a_run_directory_exports_its_start(bridged, tmp_path, folder, capsys):
    run_dir = bridged / 'bridge'
    export.main([str(run_dir / 'ckpt.pt'), str(tmp_path / 'end')])
    back = GPT.from_pretrained(str(tmp_path / 'end'))
    end = analysis.load_run(str(run_dir / 'ckpt.pt'), 'cpu')[0]
    assert back.state_dict().keys() == end.state_dict().keys()
    assert all(torch.equal(v, end.state_dict()[k]) for k, v in back.state_dict().items())  # the round trip is exact
    assert 'its patch embedding and head from image.safetensors' in capsys.readouterr().out
    export.main([str(run_dir), str(tmp_path / 'start')])
    start = GPT.from_pretrained(str(tmp_path / 'start'))
    ckpt = torch.load(run_dir / 'ckpt.pt', weights_only=True)
    assert checkpoint.weights_hash(start) == ckpt['start']['weights']  # step 0: the model it started from
    assert json.load(open(tmp_path / 'start' / 'image_config.json'))['step'] == 0
    # bridge.py starts from an export as from a checkpoint: its sizes, and its head for the same classes
    bridge.main(['--stage', 'finetune', '--init_from', str(tmp_path / 'end'), '--dataset', 'folder', '--data_dir',
                 folder, '--out_dir', str(tmp_path / 'ft'), '--max_iters', '2', '--batch_size', '16', '--device', 'cpu',
                 '--num_workers', '0'])
    ft = torch.load(tmp_path / 'ft' / 'ckpt.pt', weights_only=True)
    assert ft['start'] == dict(weights=checkpoint.weights_hash(back), new_head=False)
    assert ft['config']['img_size'] == 16 and ft['config']['patch_size'] == 4
    with pytest.raises(UserError, match=r'--patch_size 8: .*end was trained with patch_size 4, part of its network'):
        bridge.main(['--init_from', str(tmp_path / 'end'), '--patch_size', '8', '--out_dir', str(tmp_path / 'x')])


def test_export_refuses_a_folder_that_holds_files(bridged, tmp_path):
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'notes.txt').write_text('mine')
    with pytest.raises(UserError, match=r'busy exists and holds files: export.py writes only into a new or empty'):
        export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(tmp_path / 'busy')])
    assert os.listdir(tmp_path / 'busy') == ['notes.txt']
    r = cli('export.py', str(bridged / 'bridge' / 'ckpt.pt'))
    assert r.returncode == 1 and r.stderr.startswith('error: usage: python export.py'), r.stderr


def test_an_export_is_whole_or_absent_and_a_flag_is_no_folder_name(bridged, tmp_path, monkeypatch):
    """Killed while writing (here: an interrupt before the model card), an export leaves nothing that
    --init_from would load as a plain GPT-2; `--out` is a mistake, not a folder's name."""
    def killed(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(export, 'model_card', killed)
    with pytest.raises(KeyboardInterrupt):
        export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(tmp_path / 'hf')])
    assert os.listdir(tmp_path) == []                                     # neither hf/ nor its temporary folder
    monkeypatch.undo()
    (tmp_path / 'empty').mkdir()
    export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(tmp_path / 'empty')])
    assert sorted(os.listdir(tmp_path / 'empty')) == sorted(export.FILES)  # an empty folder is filled
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(tmp_path / 'empty').st_mode & 0o777 == 0o777 & ~mask   # not mkdtemp's private 0700
    with pytest.raises(UserError, match=r"usage: python export.py CKPT_OR_RUN_DIR OUT_DIR, not .*ckpt.pt --out"):
        export.main([str(bridged / 'bridge' / 'ckpt.pt'), '--out'])
    assert not os.path.exists('--out')


@pytest.mark.parametrize('edit, error', [
    ('img_size 32', r"image_config.json says img_size 32, but its image.safetensors was exported with 16: one was "
                    r"edited"),
    ('patch_size 8', r"image_config.json says patch_size 8, but its image.safetensors was exported with 4"),
    ('patch_size 0', r"image_config.json: patch_size 0 is not a positive whole number"),
    ('img_size -16', r"image_config.json: img_size -16 is not a positive whole number"),
    ('img_size 16.5', r"image_config.json: img_size 16.5 is not a positive whole number"),
    ('drop head.bias', r"image.safetensors' head.bias is missing, where .* need \(4,\)"),
    ('kernel 2', r"image.safetensors' patch.weight is \(64, 3, 2, 2\), where .* need \(64, 3, 4, 4\)"),
])
def test_an_exports_parts_are_checked_against_each_other_before_use(bridged, tmp_path, edit, error):
    from safetensors.torch import load_file, save_file
    out = tmp_path / 'hf'
    export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(out)])
    cfg, parts = json.load(open(out / 'image_config.json')), load_file(out / 'image.safetensors')
    what, value = edit.split(' ')
    if what in ('img_size', 'patch_size'):
        cfg[what] = float(value) if '.' in value else int(value)
        (out / 'image_config.json').write_text(json.dumps(cfg))
    elif what == 'drop':
        save_file({k: v for k, v in parts.items() if k != value}, out / 'image.safetensors')
    else:  # a kernel of another shape, written without the sizes, as an export made before they were kept
        save_file(dict(parts, **{'patch.weight': parts['patch.weight'][:, :, :2, :2].contiguous()}),
                  out / 'image.safetensors')
    with pytest.raises(UserError, match=error):
        GPT.from_pretrained(str(out))


def test_export_refuses_nan_weights_and_checks_where_it_writes_first(bridged, tmp_path, monkeypatch):
    ckpt = torch.load(bridged / 'bridge' / 'ckpt.pt', weights_only=True)
    ckpt['model']['transformer.h.1.mlp.c_fc.weight'][0, 0] = float('nan')  # diverged
    torch.save(ckpt, tmp_path / 'nan.pt')
    with pytest.raises(UserError, match=r'nan.pt holds weights that are not finite \(transformer.h.1.mlp.c_fc.weight\)'
                                        r': a diverged run; export an earlier checkpoint'):
        export.main([str(tmp_path / 'nan.pt'), str(tmp_path / 'hf')])
    assert sorted(os.listdir(tmp_path)) == ['nan.pt']
    os.symlink(tmp_path / 'gone', tmp_path / 'dangling')
    loads = []
    monkeypatch.setattr(export, 'load_run', lambda *a: loads.append(a))  # nothing is read before these are refused
    with pytest.raises(UserError, match=r'dangling is a link to .*gone, which does not exist'):
        export.main([str(tmp_path / 'nan.pt'), str(tmp_path / 'dangling')])
    with pytest.raises(UserError, match=r'OUT_DIR is empty: name the folder to write the export into'):
        export.main([str(tmp_path / 'nan.pt'), ''])
    monkeypatch.setattr(tempfile, 'mkdtemp', lambda **kw: (_ for _ in ()).throw(OSError(30, 'Read-only file system')))
    with pytest.raises(UserError, match=r'cannot write an export into .*ro/hf: Read-only file system'):
        export.main([str(tmp_path / 'nan.pt'), str(tmp_path / 'ro' / 'hf')])
    assert loads == []
    monkeypatch.undo()
    os.makedirs(tmp_path / 'target')
    os.symlink(tmp_path / 'target', tmp_path / 'link')  # a link to an empty folder: the export goes there
    export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(tmp_path / 'link')])
    assert os.path.islink(tmp_path / 'link') and sorted(os.listdir(tmp_path / 'target')) == sorted(export.FILES)


def test_side_commands_stop_on_ctrl_c_with_one_line(bridged, tmp_path):
    """export.py (and analysis, sample, bench: the same run_cli) interrupted mid-work: one line, 130, no traceback."""
    code = ("import export, configurator, sys; export.model_card = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt);"
            f"sys.argv = ['export.py', {str(bridged / 'bridge' / 'ckpt.pt')!r}, {str(tmp_path / 'hf')!r}];"
            "configurator.run_cli(export.main)")
    r = cli('-c', code)
    assert r.returncode == 130 and r.stderr == 'stopped by SIGINT (Ctrl-C): nothing more is written\n', r.stderr
    assert os.listdir(tmp_path) == []


def test_a_log_or_text_file_given_as_weights_says_what_it_is(bridged, tmp_path):
    with pytest.raises(UserError, match=r"cannot read .*metrics.jsonl: it is not a file of torch.save or safetensors "
                                        r"\(it begins with b'\{\"it', a text file\)$"):
        GPT.from_pretrained(str(bridged / 'bridge' / 'metrics.jsonl'))


# ---------------------------------------------------------------- analysis.py: the paper's figures
def assert_png_and_json(prefix):
    with Image.open(f'{prefix}.png') as im:
        assert im.format == 'PNG' and im.size[0] > 200 and im.size[1] > 200
    with open(f'{prefix}.json') as fh:
        return strict_json(fh.read())


def test_outlier_counts_on_a_hand_built_state_dict(tmp_path):
    sd = {'h.0.attn.c_attn.weight': torch.tensor([[0.1, 1.5, -2.0, 0.3, 0.0], [1.0, -1.0, 0.9, 3.0, 0.2]]),  # 3
          'h.0.ln_1.weight': torch.tensor([1.0, 1.2, 0.8, 1.0]),                                        # 1, LayerNorm
          'h.1.mlp.c_proj.bias': torch.tensor([0.5, -1.5]),                                             # 1
          'h.1.mlp.c_fc.weight': torch.tensor([-1.0, 1.0] * 50 + [30.0]),                               # 1; 9.4 std out
          'wte.weight': torch.tensor([[2.0, 0.0], [0.0, 0.0]]),                                         # 1, embedding
          'h.0.attn.bias': torch.ones(1, 1, 4, 4),                                                      # a mask
          'step': torch.tensor(5)}                                                                      # not a weight
    torch.save(sd, tmp_path / 'hand.pt')
    hand = str(tmp_path / 'hand.pt')
    r = analysis.main(['outliers', hand, '--out', str(tmp_path / 'o')])['models'][hand]
    assert r['all'] == dict(params=121, outliers=7, ratio=7 / 121, relative_outliers=1, relative_ratio=1 / 121)
    core = r['without_layernorm_and_embeddings']
    assert (core['params'], core['outliers']) == (113, 5)
    blocks = [(b['block'], b['params'], b['outliers'], b['relative_outliers']) for b in r['per_block']]
    assert blocks == [(0, 14, 4, 0), (1, 103, 2, 1)]
    assert assert_png_and_json(tmp_path / 'o')['threshold'] == 1.0
    r = analysis.main(['outliers', str(tmp_path / 'hand.pt'), '--threshold', '2.5', '--out', str(tmp_path / 'o2')])
    assert r['models'][str(tmp_path / 'hand.pt')]['all']['outliers'] == 2                             # 3.0 and 30.0


def test_outliers_of_gpt2_checkpoints_and_runs(bridged, hf_dir, tmp_path):
    _, hf_path = hf_dir
    srcs = [hf_path, str(bridged / 'bridge'), str(bridged / 'bridge' / 'ckpt.pt')]
    r = analysis.main(['outliers', *srcs, '--out', str(tmp_path / 'o')])
    gpt2 = r['models'][hf_path]['all']
    assert gpt2['params'] == sum(p.numel() for p in GPT.from_pretrained(hf_path).parameters())
    assert gpt2['outliers'] > 0                    # the test model's weights have trained-like scale (hf_gpt2)
    assert r['models'][srcs[1]]['all']['outliers'] == 0   # GPT-2's init: nothing near 1 but LN gains (= 1)
    assert len(r['models'][srcs[2]]['per_block']) == 2
    assert_png_and_json(tmp_path / 'o')


def test_run_directory_rebuilds_the_runs_step_zero(folder, tmp_path):
    """Only the head trains: every other tensor of the checkpoint must equal the rebuilt step 0, bit for bit."""
    run(folder, tmp_path / 'r', '--max_iters', '3', '--batch_size', '16', '--freeze', '0-2,wpe,ln_f,patch',
        '--lr', '1e-2')
    start, _, _ = analysis.load_run(str(tmp_path / 'r'), 'cpu')
    end, _, _ = analysis.load_run(str(tmp_path / 'r' / 'ckpt.pt'), 'cpu')
    s, e = start.state_dict(), end.state_dict()
    assert s.keys() == e.keys()
    for k in s:
        assert torch.equal(s[k], e[k]) == (not k.startswith('head.')), k


def test_step_zero_of_a_hand_off_is_refused_once_its_start_changed(folder, tmp_path):
    run(folder, tmp_path / 'a', '--max_iters', '2', '--batch_size', '16')
    bridge.main(['--stage', 'finetune', '--init_from', str(tmp_path / 'a' / 'ckpt.pt'), '--dataset', 'folder',
                 '--data_dir', folder, '--out_dir', str(tmp_path / 'b'), '--max_iters', '2', '--batch_size', '16',
                 '--device', 'cpu', '--compile', 'False', '--num_workers', '0'])
    start, _, _ = analysis.load_run(str(tmp_path / 'b'), 'cpu')  # stage 1's end, a new head: checked
    a = torch.load(tmp_path / 'a' / 'ckpt.pt', weights_only=True)['model']
    assert all(torch.equal(v, a[k]) for k, v in start.state_dict().items() if not k.startswith('head.'))
    run(folder, tmp_path / 'a', '--max_iters', '4', '--batch_size', '16', '--init_from', 'resume')  # stage 1 moves on
    with pytest.raises(UserError, match=r'cannot rebuild the weights .*b started from: .*a/ckpt.pt has changed'):
        analysis.load_run(str(tmp_path / 'b'), 'cpu')


def test_curves_read_a_checkpoints_own_history_and_figures_say_what_a_run_was(bridged, tmp_path):
    ckpt = str(bridged / 'bridge' / 'ckpt.pt')
    from_ckpt = analysis.main(['curves', ckpt, '--out', str(tmp_path / 'a')])[ckpt]
    from_dir = analysis.main(['curves', str(bridged / 'bridge'), '--out', str(tmp_path / 'b')])
    assert from_ckpt == from_dir[str(bridged / 'bridge')]
    assert analysis.name_of(ckpt) == 'bridge: scratch, 100% random labels (trained)'
    assert analysis.name_of(str(bridged / 'real')) == 'real: scratch, 0% random labels (start)'
    assert analysis.name_of('gpt2-medium') == 'gpt2-medium'


def test_curves_plot_every_run(bridged, tmp_path):
    real = str(bridged / 'real' / 'metrics.jsonl')
    r = analysis.main(['curves', str(bridged / 'bridge'), real, '--out', str(tmp_path / 'c')])
    assert_png_and_json(tmp_path / 'c')
    assert r[str(bridged / 'bridge')]['label'] == 'bridge: scratch, 100% random labels'
    assert r[real]['label'] == 'real: scratch, 0% random labels'
    assert r[real]['final_test_acc'] == metrics(bridged / 'real')[-1]['test_acc']


def test_landscape_ends_are_the_start_and_end_of_training(bridged, tmp_path, folder):
    run_dir = str(bridged / 'bridge')  # a run directory: its ckpt.pt is the end, its step 0 the start
    r = analysis.main(['landscape', run_dir, '--grid', '5', '--batches', '1', '--batch_size', '32',
                       '--out', str(tmp_path / 'l')])
    assert assert_png_and_json(tmp_path / 'l')['alphas'] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert len(r['loss']) == 5 and all(len(row) == 5 for row in r['loss'])
    assert r['loss'][2][2] == pytest.approx(r['loss_end']) and r['loss'][2][0] == pytest.approx(r['loss_start'])
    d = data.load_dataset('folder', folder, 16, 'cpu')
    for src, key in ((run_dir + '/ckpt.pt', 'loss_end'), (run_dir, 'loss_start')):  # evaluated directly
        net = analysis.load_run(src, 'cpu')[0]
        x, y, _ = analysis.images_for(net, d, 'test', 32, seed=0)
        with torch.no_grad():
            assert r[key] == pytest.approx(torch.nn.functional.cross_entropy(net(x), y).item(), rel=1e-4)
    assert r['loss_end'] != pytest.approx(r['loss_start'], rel=1e-3)


def test_images_are_a_seeded_sample_of_every_class():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)  # sorted by class, as a folder is
    idx = data.balanced_subset(y, 30, seed=0)
    assert torch.bincount(y[idx]).tolist() == [10, 10, 10] and idx.tolist() == sorted(set(idx.tolist()))
    assert torch.equal(idx, data.balanced_subset(y, 30, seed=0))
    assert not torch.equal(idx, data.balanced_subset(y, 30, 1))
    assert torch.bincount(y[data.balanced_subset(y, 70, seed=0)]).tolist() == [25, 25, 20]  # class 2 runs out


def test_tsne_separates_classes_after_real_training(bridged, tmp_path):
    r = analysis.main(['tsne', str(bridged / 'real'), str(bridged / 'real' / 'ckpt.pt'), '--images', '64',
                       '--out', str(tmp_path / 't')])
    assert_png_and_json(tmp_path / 't')
    before, after = r[str(bridged / 'real')], r[str(bridged / 'real' / 'ckpt.pt')]
    assert after['silhouette'] > before['silhouette'] and after['silhouette'] > 0.3   # trained features cluster
    assert after['intra_over_total_spread'] < before['intra_over_total_spread'] and before['images'] == 64


def test_alignment_rises_under_random_labels_on_anisotropic_images_only(tmp_path):
    """Theorem 4.1, measured: random-label training pulls the patch filters' covariance towards the covariance
    of the image patches (Maennel et al. 2020); with isotropic noise there is nothing to align to. The lr is high
    enough for the patch embedding to move as far as its initial norm: with a smaller move the isotropic init
    dominates Sigma_w."""
    found = {}
    for kind in ('smooth', 'noise'):
        root = write_patterns(tmp_path / kind, kind)
        run(root, tmp_path / f'run_{kind}', '--max_iters', '400', '--batch_size', '32', '--lr', '1e-2',
            '--warmup_epochs', '1', '--aug', 'none', '--dropout', '0', '--label_smoothing', '0',
            '--eval_interval', '400')
        r = analysis.main(['alignment', str(tmp_path / f'run_{kind}'), str(tmp_path / f'run_{kind}' / 'ckpt.pt'),
                           '--images', '128', '--out', str(tmp_path / f'a_{kind}')])
        assert_png_and_json(tmp_path / f'a_{kind}')
        found[kind] = [r[str(tmp_path / f'run_{kind}')], r[str(tmp_path / f'run_{kind}' / 'ckpt.pt')]]
    (s0, s1), (n0, n1) = found['smooth'], found['noise']
    # the cosine of Sigma_w and Sigma_x rises by half at least: over seeds 0-3 it grew 1.9x, 6.3x, 4.0x, 4.6x
    assert s1['alignment'] > 1.5 * s0['alignment']
    assert s1['top_k_overlap'] > s0['top_k_overlap']           # and the leading eigenvectors move towards Sigma_x's
    assert n1['alignment'] < n0['alignment']                   # isotropic inputs: no rise


def test_probe_fit_agrees_with_scikit_learn():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    x, y = (torch.tensor(v) for v in load_digits(return_X_y=True))
    x, train = x.float(), torch.arange(len(y)) % 5 != 0  # a real small dataset: 64 pixels, 10 classes
    for l2 in (1e-1, 1e-3):
        w = analysis.logistic_regression(x[train], y[train], 10, l2)
        z = [((v - w[2]) / w[3]).numpy() for v in (x[train], x[~train])]  # standardized as ours was
        ref = LogisticRegression(C=1 / (l2 * int(train.sum())), max_iter=20000, tol=1e-8).fit(z[0], y[train].numpy())
        assert abs(analysis.accuracy(w, x[~train], y[~train]) - ref.score(z[1], y[~train].numpy())) <= 0.01
        torch.testing.assert_close(w[0].T, torch.tensor(ref.coef_).float(), atol=2e-2, rtol=2e-2)  # the same W


def test_probe_features_after_ln_f_at_the_last_token_are_the_models_features():
    torch.manual_seed(0)
    net = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=64, vocab_size=0, n_classes=4, img_size=16, patch_size=4)).eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        states = net.hidden_states(x)
        assert len(states) == 3 + 2 and all(s.shape == (5, 16, 64) for s in states)
        assert torch.equal(states[-1][:, -1], net.features(x))


def test_probe_a_network_trained_on_true_labels_probes_far_above_a_random_one(digits, tmp_path):
    bridge.main(['--stage', 'finetune', '--init_from', 'scratch', '--model', '2x64', '--dataset', 'folder',
                 '--data_dir', digits, '--img_size', '16', '--patch_size', '4', '--aug', 'none', '--max_iters', '300',
                 '--lr', '3e-3', '--batch_size', '64', '--dropout', '0', '--warmup_epochs', '0', '--device', 'cpu',
                 '--num_workers', '0', '--out_dir', str(tmp_path / 'real'), '--eval_interval', '300'])
    r = analysis.main(['probe', str(tmp_path / 'real' / 'ckpt.pt'), str(tmp_path / 'real'), 'scratch', '--model',
                       '2x64', '--out', str(tmp_path / 'p'), '--device', 'cpu'])
    assert_png_and_json(tmp_path / 'p')
    trained, start, scratch = (r['sources'][s]['layers'] for s in r['sources'])
    assert [row['layer'] for row in trained] == ['input', 'block 0', 'block 1', 'ln_f']
    assert trained[-1]['last']['test_acc'] > scratch[-1]['last']['test_acc'] + 0.2  # the head's own features
    assert start == scratch  # a run's step 0 is the scratch network of its seed, rebuilt exactly
    assert trained[0]['features'] == 64 and trained[0]['train'] == 1437 and trained[0]['test'] == 360
    assert r['chance'] == 0.1 and all(row['last']['l2'] in analysis.L2 for row in trained)


def test_probe_images_is_a_seeded_balanced_subset_of_the_train_split(folder, tmp_path, capsys):
    args = ['probe', 'scratch', '--model', '1x64', '--dataset', 'folder', '--data_dir', folder, '--img_size', '16',
            '--patch_size', '4', '--device', 'cpu', '--out', str(tmp_path / 'p')]
    r = analysis.main(args + ['--images', '40'])
    assert all(row['train'] == 40 and row['test'] == 64 for row in r['sources']['scratch']['layers'])
    assert 'a seeded, class-balanced subset (seed 0): 40 of the 128 train images, 10-10 of each class' in \
        capsys.readouterr().out
    assert analysis.main(args + ['--images', '40']) == r  # seeded: the same subset, the same probe
    assert analysis.main(args)['sources']['scratch']['layers'][0]['train'] == 128  # 0: the whole split


def test_analysis_knows_where_it_writes_before_the_work_and_refuses_what_it_cannot_fit(bridged, tmp_path,
                                                                                       monkeypatch):
    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, 'TemporaryFile', lambda **kw: (_ for _ in ()).throw(OSError(30, 'Read-only file '
                                                                                                   'system')))
    with pytest.raises(UserError, match=r'--out .*ro/c: cannot write into its folder \(Read-only file system\)'):
        analysis.main(['curves', str(bridged / 'bridge'), '--out', str(tmp_path / 'ro' / 'c'), '--device', 'cpu'])
    monkeypatch.setattr(tempfile, 'TemporaryFile', real)
    ckpt = torch.load(bridged / 'bridge' / 'ckpt.pt', weights_only=True)
    ckpt['model']['transformer.h.0.attn.c_attn.weight'][0, 0] = float('nan')  # a diverged run
    torch.save(ckpt, tmp_path / 'nan.pt')
    for sub in ('probe', 'tsne'):  # not a failure inside L-BFGS or t-SNE
        with pytest.raises(UserError, match=r'nan.pt: its features are not finite \(NaN or inf weights: a diverged'):
            analysis.main([sub, str(tmp_path / 'nan.pt'), '--out', str(tmp_path / sub), '--device', 'cpu',
                           '--images', '40'])
    two = make_folder(tmp_path / 'two', n_classes=2, n_train=1, n_val=1)
    with pytest.raises(UserError, match=r'probe: folder at .*two has 2 training images; it needs at least 10'):
        analysis.main(['probe', 'scratch', '--model', '2x64', '--dataset', 'folder', '--data_dir', two,
                       '--img_size', '16', '--patch_size', '4', '--out', str(tmp_path / 'p'), '--device', 'cpu'])
    for bad, shown in (('"0.5"', "'0.5'"), ('null', 'None')):
        os.makedirs(tmp_path / 'odd', exist_ok=True)
        (tmp_path / 'odd' / 'metrics.jsonl').write_text(f'{{"epoch": 1, "train_acc": 0.5, "test_acc": {bad}}}\n')
        with pytest.raises(UserError, match=rf'odd/metrics.jsonl, line 1: test_acc is {shown}, not a number$'):
            analysis.main(['curves', str(tmp_path / 'odd'), '--out', str(tmp_path / 'c'), '--device', 'cpu'])


def test_the_offline_tokenizer_line_names_the_files_tiktoken_looks_for_and_where(tmp_path, monkeypatch):
    import tiktoken.load
    import tiktoken.registry
    asked = []

    def offline(url):  # what tiktoken fetches, recorded; no network here
        asked.append(url)
        raise ConnectionError('no network')
    monkeypatch.setattr(tiktoken.load, 'read_file', offline)
    monkeypatch.setattr(tiktoken.registry, 'ENCODINGS', {})
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(tmp_path / 'cache'))
    with pytest.raises(UserError) as e:
        sample.gpt2_encoding()
    assert asked and all(os.path.basename(u) in ('vocab.bpe', 'encoder.json') for u in asked)
    for url in asked:  # the names tiktoken gives its cached files: the sha1 of the URL it fetched
        assert f"{hashlib.sha1(url.encode()).hexdigest()} ({os.path.basename(url)})" in str(e.value)
    assert f"tiktoken looks in {tmp_path / 'cache'} for" in str(e.value)
    assert str(e.value).endswith('into a folder here, and set TIKTOKEN_CACHE_DIR to that folder')


def test_sample_refuses_an_image_export_a_tiny_vocabulary_and_an_empty_byte_prompt(bridged, tmp_path, hf_dir):
    export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(tmp_path / 'hf')])
    r = cli('sample.py', str(tmp_path / 'hf'))
    assert r.returncode == 1 and re.fullmatch(r'error: .*hf is an export of an image model \(export.py\): it keeps '
                                              r'no token embedding, .* it started from, scratch\n', r.stderr), r.stderr
    hf_gpt2(vocab_size=100).save_pretrained(tmp_path / 'small')
    r = cli('sample.py', str(tmp_path / 'small'))
    assert r.returncode == 1 and 'has a vocabulary of 100 tokens: sample.py reads' in r.stderr, r.stderr
    r = cli('sample.py', hf_dir[1], '')
    assert r.returncode == 1 and r.stderr == ('error: the prompt is empty: a byte-level model needs at least one '
                                              'character\n'), r.stderr


def test_a_folder_in_the_place_of_a_checkpoints_temporary_file_is_refused_at_start(folder, tmp_path):
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16')
    os.makedirs(tmp_path / 'r' / 'ckpt.pt.tmp')  # the first save would fail on it, after the training
    with pytest.raises(UserError, match=r'ckpt.pt.tmp is a folder, not a file of a killed write: the run writes '
                                        r'ckpt.pt through that name; move it away'):
        run(folder, tmp_path / 'r', '--max_iters', '4', '--batch_size', '16', '--init_from', 'resume')


def test_bench_stream_names_its_own_layout_and_claims_no_check_it_did_not_make(tmp_path, folder):
    with pytest.raises(UserError, match=r'no image folder at .*none; expected --stream FOLDER/<class>/<image>$'):
        bench.main(['--stream', str(tmp_path / 'none'), '--device', 'cpu'])
    copy = shutil.copytree(os.path.join(folder, 'train'), tmp_path / 'train')
    (copy / 'class0' / '0.png').write_bytes(b'not a png')
    with pytest.raises(UserError, match=r'cannot decode .*class0/0.png \(UnidentifiedImageError: .*\)$'):
        bench.main(['--stream', str(copy), '--img_size', '16', '--batch_size', '64', '--steps', '1',
                    '--num_workers', '0', '--device', 'cpu'])


def test_the_lab_runs_every_arm_summarizes_them_and_a_rerun_trains_only_what_is_missing(folder, tmp_path):
    """lab.sh with a local GPT-2 (transformers writes a 6-block one: blocks 0-4 can be frozen) on an image folder."""
    hf_gpt2(n_layer=6).save_pretrained(tmp_path / 'gpt2')
    env = {**os.environ, 'GPT2': str(tmp_path / 'gpt2'), 'MODEL': '6x64', 'OUT': str(tmp_path / 'lab'),
           'OMP_NUM_THREADS': '1'}
    flags = ['--dataset', 'folder', '--data_dir', folder, '--device', 'cpu', '--compile', 'False', '--num_workers',
             '0', '--img_size', '16', '--patch_size', '4', '--subset', '64', '--test_subset', '32', '--max_iters', '4',
             '--eval_interval', '4', '--batch_size', '8', '--dtype', 'float32']
    r = subprocess.run(['bash', 'lab.sh', 'lab', *flags], cwd=HERE, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('step 4/4') == 8  # 3 bridges, 5 fine-tunes
    summary = json.load(open(tmp_path / 'lab' / 'compare.json'))
    assert [a['arm'] for a in summary['arms']] == ['scratch', 'gpt2', 'gpt2_bridge', 'gpt2_bridge_p5', 'scratch_bridge']
    assert [a['label'] for a in summary['arms']] == [
        'scratch 6x64 -> finetune', 'gpt2 -> finetune', 'gpt2 -> bridge -> finetune',
        'gpt2 -> bridge (0-5,wpe frozen) -> finetune', 'scratch 6x64 -> bridge -> finetune']
    assert all(a['steps'] == 4 for a in summary['arms']) and summary['arms'][0]['gain'] == 0
    assert summary['arms'][1]['gain'] == pytest.approx(summary['arms'][1]['test_acc'] - summary['arms'][0]['test_acc'])
    assert '| gpt2_bridge_p5 | gpt2 -> bridge (0-5,wpe frozen) -> finetune | 4 |' in r.stdout
    assert_png_and_json(tmp_path / 'lab' / 'compare')
    p5 = torch.load(tmp_path / 'lab' / 'bridge_p5' / 'ckpt.pt', weights_only=True)['model']
    start = GPT.from_pretrained(str(tmp_path / 'gpt2'), n_classes=4, vocab_size=0, img_size=16, patch_size=4)
    key = 'transformer.h.4.attn.c_attn.weight'  # block 4: frozen by 0-5, at its language weights
    assert torch.equal(p5[key], start.state_dict()[key])
    shutil.rmtree(tmp_path / 'lab' / 'gpt2_bridge_p5')  # as if the lab had been killed there
    again = subprocess.run(['bash', 'lab.sh', 'lab', *flags], cwd=HERE, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count('step 4/4') == 1 and 'gpt2_bridge_p5 holds no checkpoint: starting' in again.stdout
    assert json.load(open(tmp_path / 'lab' / 'compare.json'))['arms'] == summary['arms']  # the same arms, again


def test_analysis_needs_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # as if it were not installed
    with pytest.raises(UserError, match='pip install matplotlib scikit-learn'):
        analysis.main(['curves', str(tmp_path)])


# ---------------------------------------------------------------- bench.py
def test_bench_runs_on_cpu_says_what_it_does_and_ends_with_json():
    r = cli('bench.py', '--model', '2x64', '--img_size', '16', '--patch_size', '4', '--batch_size', '8',
            '--device', 'cpu', '--compile', 'False', '--steps', '2', '--rounds', '2', '--warmup', '1')
    assert r.returncode == 0, r.stderr
    out = strict_json(r.stdout.strip().splitlines()[-1])
    assert out['ours_img_s'] > 0 and out['hf_img_s'] > 0 and out['data_img_s'] > 0
    assert 0 < out['mfu'] < 1 and 0 < out['hf_mfu'] < 1  # shares of this CPU's own matmul rate at each dtype
    rates = re.search(r'matmul rate of this CPU: ours \((\w+)\) (\d+) GFLOP/s, hf \(float32\) (\d+) GFLOP/s', r.stdout)
    assert rates and rates[1] == ('bfloat16' if configurator.native_bf16() else 'float32'), r.stdout
    flops = GPT(GPTConfig(n_layer=2, n_head=1, n_embd=64, vocab_size=0, n_classes=10, img_size=16,
                          patch_size=4)).flops_per_image()
    assert out['mfu'] == pytest.approx(out['ours_img_s'] * flops / (int(rates[2]) * 1e9), rel=0.02)
    assert out['ratio'] == pytest.approx(out['ours_img_s'] / out['hf_img_s'], rel=1e-2)
    assert 'warming up ours' in r.stdout and 'timing round 2/2' in r.stdout and 'ours / transformers:' in r.stdout


def test_bench_models_compute_the_same_function():
    """The benchmark is fair only if both sides are the same network: copy our weights into the HF side."""
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


def test_bench_times_the_streaming_decode(folder, capsys):
    out = bench.main(['--stream', os.path.join(folder, 'train'), '--img_size', '16', '--batch_size', '16',
                      '--steps', '3', '--num_workers', '1', '--device', 'cpu'])
    assert out['stream_img_s'] > 0 and out['workers'] == 1 and out['per_worker_img_s'] == out['stream_img_s']
    assert strict_json(capsys.readouterr().out.strip().splitlines()[-1]) == out


# ---------------------------------------------------------------- GPU: skipped without CUDA (.ci/gpu runs them)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (run .ci/gpu on one)')


def gpu_net(n_layer=2, n_head=16, n_embd=1024, seed=0):
    """A random GPT-2 image model at the paper's 224/16 (196 tokens) on the GPU."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=0, n_classes=10, img_size=224,
                         patch_size=16)).cuda()


@pytest.mark.gpu
@gpu
def test_gpu_attention_runs_on_the_flash_kernel_forward_and_backward():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    net, x = gpu_net(), torch.randn(8, 3, 224, 224, device='cuda')
    results = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):  # flash raises if it cannot run these inputs
        net.zero_grad()
        with sdpa_kernel(backend), torch.autocast('cuda', dtype=torch.bfloat16):
            out = net(x).float()
        out.square().mean().backward()
        results.append((out.detach(), net.patch.weight.grad.clone()))
    (flash, flash_grad), (math_out, math_grad) = results
    assert relative(flash, math_out) < 2e-2 and relative(flash_grad, math_grad) < 5e-2


@pytest.mark.gpu
@gpu
def test_gpu_compiled_bf16_training_steps_match_eager():
    losses = {}
    for compiled in (False, True):
        net = gpu_net(n_layer=4, n_head=8, n_embd=512)
        opt = net.configure_optimizers(0.05, 1e-4, (0.9, 0.999))
        step_net = torch.compile(net) if compiled else net
        g = torch.Generator('cuda').manual_seed(1)
        losses[compiled] = []
        for _ in range(3):
            x = torch.randn(16, 3, 224, 224, device='cuda', generator=g)
            y = torch.randint(0, 10, (16,), device='cuda', generator=g)
            with torch.autocast('cuda', dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(step_net(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[compiled].append(loss.item())
        losses[compiled].append(net.head.weight.detach().clone())
    *eager, w_eager = losses[False]
    *compiled, w_compiled = losses[True]
    assert compiled == pytest.approx(eager, rel=2e-2) and relative(w_compiled, w_eager) < 2e-2


@pytest.mark.gpu
@gpu
def test_gpu_fused_adamw_takes_the_step_of_the_unfused_one(capsys):
    weights = []
    for fused in (False, True):
        net = gpu_net(n_layer=2, n_head=4, n_embd=256)
        opt = net.configure_optimizers(0.05, 1e-3, (0.9, 0.999))
        assert opt.defaults['fused'] is True
        if not fused:
            groups = [dict(params=g['params'], weight_decay=g['weight_decay']) for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999))
        x = torch.randn(8, 3, 224, 224, device='cuda', generator=torch.Generator('cuda').manual_seed(1))
        for _ in range(3):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        weights.append(net.state_dict())
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@gpu
def test_gpu_bridge_run_of_a_gpt2_medium_sized_model_on_cifar_sized_data(tmp_path, monkeypatch, capsys):
    """The main job's path, timed: random gpt2-medium weights, 224/16, 50,000 + 10,000 uint8 32x32 images."""
    def synthetic_cifar(name, data_dir, train):
        n, g = (50_000 if train else 10_000), torch.Generator().manual_seed(int(train))
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return images, torch.randint(0, 10, (n,), generator=g), [f'class{k}' for k in range(10)], f'synthetic{train}'
    monkeypatch.setattr(downloads, 'cifar', synthetic_cifar)  # load_dataset's
    monkeypatch.setitem(data.DATASETS['cifar10'], 'fetched', False)  # nothing to download
    torch.cuda.reset_peak_memory_stats()
    result = bridge.main(['--init_from', 'scratch', '--model', 'gpt2-medium', '--out_dir', str(tmp_path / 'r'),
                          '--max_iters', '120', '--log_interval', '20', '--eval_interval', '120'])
    out = capsys.readouterr().out
    speed = re.findall(r'step 1[02]0/120 .*\| (\d+) img/s( \| mfu ([\d.]+)%)?', out)
    compiles = [float(s) for s in re.findall(r'compiled in ([\d.]+) s', out)]
    assert '--compile auto: on, on CUDA' in out and compiles and result['iter'] == 120
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    with capsys.disabled():
        print(f"\nGPU bridge run, gpt2-medium 224/16, batch 64, bf16, compiled on {torch.cuda.get_device_name()}: "
              f"{speed[-1][0]} images/s, MFU {speed[-1][2] or '?'}%, peak memory {peak:.1f} GiB, compile "
              f"{sum(compiles):.0f} s in {len(compiles)} parts; test accuracy {result['test_acc']:.3f}")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two CUDA GPUs')
def test_gpu_two_process_nccl_ddp_trains(folder, tmp_path):
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        'bridge.py', '--dataset', 'folder', '--data_dir', folder, '--out_dir', str(tmp_path / 'ddp'),
                        '--init_from', 'scratch', '--model', '2x64', '--img_size', '16', '--patch_size', '4',
                        '--max_iters', '6', '--batch_size', '8', '--eval_interval', '3', '--num_workers', '0'],
                       cwd=HERE, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and 'device cuda:0, bfloat16, 2 processes' in r.stdout, r.stderr
    assert [m['iter'] for m in metrics(tmp_path / 'ddp')] == [3, 6]


# ---------------------------------------------------------------- one-line user errors, all in one table
BASE = ['--dataset', 'folder', '--data_dir', '{folder}', '--out_dir', '{tmp}/run', '--max_iters', '1',
        '--device', 'cpu', '--compile', 'False', '--num_workers', '0']
RESUME = [*BASE, '--init_from', 'resume', '--out_dir', '{run}']


@pytest.mark.parametrize('main, argv, message', [
    # flags
    ('bridge', ['--lerning_rate', '1'], r"unknown flag '--lerning_rate'"),
    ('bridge', ['--batchsize=4'], r'did you mean --batch_size'),
    ('bridge', ['--batch_size', 'big'], r"--batch_size 'big': expected an integer"),
    ('bridge', ['--compile', 'maybe'], r"--compile 'maybe' is not one of auto, True, False"),
    ('bridge', ['--reinit_head', 'maybe'], r"--reinit_head 'maybe': expected True or False"),
    ('bridge', ['--stage', 'bridg'], r"--stage 'bridg' is not one of bridge, finetune, eval; did you mean bridge"),
    ('bridge', ['--lr'], r'--lr needs a value'),
    ('bridge', ['lr=3'], r"unknown flag 'lr=3'"),
    ('bridge', [*BASE, '--lr', '-1e-3'], r'--lr -1e-3: must be >= 0'),
    ('bridge', [*BASE, '--log_interval', '0'], r'--log_interval 0: must be > 0'),
    ('bridge', [*BASE, '--lr', 'nan'], r'--lr nan: expected a finite number'),
    ('bridge', [*BASE, '--warmup_epochs', 'inf'], r'--warmup_epochs inf: expected a finite number'),
    ('bridge', [*BASE, '--dropout', 'nan'], r'--dropout nan: expected a finite number'),
    ('bridge', [*BASE, *SCRATCH, '--dropout', '1.5'], r'--dropout 1.5: must be in \[0, 1\)'),
    ('bridge', [*BASE, *SCRATCH, '--dropout', '1.0'], r'--dropout 1.0: must be in \[0, 1\)'),
    ('bridge', [*BASE, *SCRATCH, '--label_smoothing', '2'], r'--label_smoothing 2.0: must be in \[0, 1\)'),
    ('bridge', [*BASE, '--label_smoothing', 'nan'], r'--label_smoothing nan: expected a finite number'),
    ('bridge', [*BASE, *SCRATCH, '--min_lr', '0.1', '--lr', '0.01'], r'--min_lr 0.1 is above --lr 0.01'),
    ('bridge', [*BASE, *SCRATCH, '--seed', '20000000000000'], r'--seed 20000000000000: must be below 2\*\*32'),
    ('bridge', [*BASE, '--device', 'meta'], r"--device 'meta': use auto, cuda, cuda:N, mps or cpu"),
    ('bridge', [*BASE, '--device', 'mps'], r'--device mps: no Apple GPU \(MPS\) here; use --device cpu'),
    ('bridge', [*BASE, *SCRATCH, '--device', 'cuda:7'], r'--device cuda:7: no CUDA GPU is visible|this machine has'),
    ('bridge', [*BASE, '--stage', 'finetune', '--random_label_mode', 'wrong'], r'--random_label_mode is for '
                                                                             r'--stage bridge'),
    ('bridge', [*BASE, *SCRATCH, '--random_label_mode', 'wrong', '--data_dir', '{one}'],
     r'--random_label_mode wrong draws any class but the true one: folder at .*one has a single class'),
    ('bridge', [*BASE, '--random_label_fraction', '2'], r'--random_label_fraction 2.0: must be in \[0, 1\]'),
    ('bridge', [*BASE, '--stage', 'finetune', '--random_label_fraction', '0.5'], r'is for --stage bridge'),
    ('bridge', [*BASE, '--init_from', 'scratch', '--model', '3x200'], r"--model '3x200': use gpt2, .* or LAYERSxWIDTH"),
    ('bridge', [*BASE, '--init_from', 'scratch', '--model', '4x100'], r"--model '4x100': .*a width below 64 or a "
                                                                   r"multiple of 64"),
    ('bridge', [*BASE, '--init_from', 'gpt2', '--model', '2x64'], r'--model shapes a scratch model'),
    # sizes, specs and files, before any data is read
    ('bridge', [*BASE, *SCRATCH, '--freeze', '0-9'], r"bad --freeze item '0-9' in '0-9': this model has 2 blocks;.*"
                                                     r"0 <= A < B <= 2"),
    ('bridge', [*BASE, *SCRATCH, '--img_size', '18'], r'img_size 18 is not a multiple of patch_size 4'),
    ('bridge', [*BASE, *SCRATCH, '--img_size', '256'], r"4096 patches \(256/4\)\^2 exceed GPT-2's 1024 positions"),
    ('bridge', [*BASE, '--init_from', '/no/weights'], r'--init_from /no/weights: no such file or directory; use gpt2'),
    ('bridge', [*BASE, '--init_from', '{tmp}/junk.pt'], r'cannot read .*junk.pt: '),
    ('bridge', [*BASE, '--init_from', '{tmp}/old.pt'], r'old.pt was written by an older bridge.py \(it has no data, '
                                                       r'history, start, world\)'),
    ('bridge', [*BASE, '--stage', 'eval'], r'--stage eval needs --init_from a ckpt.pt of bridge.py, not gpt2-medium'),
    ('bridge', [*BASE, '--init_from', '{tmp}/extra_key.pt'], r'extra_key.pt: its model_config has fields GPTConfig '
                                                             r'does not know \(rotary\)'),
    ('bridge', [*BASE, '--init_from', '{tmp}/wide_head.pt'], r'wide_head.pt does not fit: size mismatch for '
                                                             r'head.weight'),
    ('bridge', [*BASE, '--init_from', 'resume', '--out_dir', '{tmp}/flagless', '--grad_clip', '0.5'],
     r"continues .*flagless as it was: --grad_clip 0.5 is not the run's 1.0"),
    ('bridge', [*BASE, '--stage', 'eval', '--init_from', '{tmp}/pool_mean.pt'],
     r'pool_mean.pt: its model_config has fields GPTConfig does not know \(pool\)'),
    ('bridge', [*BASE, '--init_from', '{run}/ckpt.pt', '--patch_size', '8'],
     r'--patch_size 8: .*ckpt.pt was trained with patch_size 4, part of its network'),
    ('bridge', [*BASE, *SCRATCH, '--data_dir', '/no/data'], r'no image folder at /no/data/train'),
    ('bridge', [*BASE, *SCRATCH, '--batch_size', '1000'], r'--batch_size 1000 x 1 processes exceeds the 128 training'),
    ('bridge', [*BASE, *SCRATCH, '--freeze', 'all,patch,head'], r'--freeze all,patch,head leaves nothing to train'),
    ('bridge', [*BASE, '--stage', 'eval', '--init_from', '{run}/ckpt.pt', '--data_dir', '{three}'],
     r'ckpt.pt classifies 4 classes \(class0, .*\), folder at .*three has 3'),
    # a run's folder: never replaced, resumed only as it was
    ('bridge', [*BASE, *SCRATCH, '--out_dir', '{run}'],
     r'bridge holds a bridge run at step 30: continue it with --init_from resume, or start elsewhere with another'),
    ('bridge', [*BASE, '--init_from', 'resume'], r'--init_from resume: no checkpoint at .*run/ckpt.pt'),
    ('bridge', [*BASE, *SCRATCH, '--out_dir='], r"--out_dir '': expected a directory path"),
    ('bridge', [*BASE, *SCRATCH, '--out_dir', '{tmp}/junk.pt'], r'--out_dir .*junk.pt is a file: the run'),
    ('bridge', [*BASE, *SCRATCH, '--out_dir', '{tmp}/junk.pt/run'], r'cannot write into --out_dir .*junk.pt/run: '
                                                                    r'Not a directory'),
    ('bridge', [*RESUME, '--lr', '1'], r"continues .*bridge as it was: --lr 1.0 is not the run's 0.003"),
    ('bridge', [*RESUME, '--stage', 'finetune'], r"--stage 'finetune' is not the run's 'bridge'"),
    ('bridge', [*RESUME, '--random_label_mode', 'wrong'], r"--random_label_mode 'wrong' is not the run's 'uniform'"),
    ('bridge', [*RESUME, '--patch_size', '8'], r"--patch_size 8 is not the run's 4"),
    ('bridge', [*RESUME, '--data_dir', '{three}'], r'folder at .*three is not the data .*bridge trained on: its '
                                                   r'classes, train, test, labels, images differ'),
    # analysis.py
    ('analysis', [], r'usage: python analysis.py'),
    ('analysis', ['plots', 'x'], r"unknown subcommand 'plots'"),
    ('analysis', ['tnse', 'x'], r"unknown subcommand 'tnse' \(did you mean tsne\?\)"),
    ('analysis', ['tsne', '{run}/metrics.jsonl'], r"metrics.jsonl is a run's metrics.jsonl, not its weights: give its "
                                                  r"ckpt.pt, or its run directory"),
    # sample.py
    ('sample', ['{run}/ckpt.pt'], r'ckpt.pt is an image model of bridge.py: it keeps no token embedding \(wte\), so '
                                  r'it has no text to sample; sample from the language model it started from, scratch'),
    ('sample', ['gpt2', '--top_k', 'many'], r"--top_k 'many': expected an integer"),
    ('analysis', ['tsne'], r'tsne needs at least one source'),
    ('analysis', ['tsne', '{tmp}'], r'is not a bridge.py run directory: it has no ckpt.pt'),
    ('analysis', ['outliers', '/no/model'], r"no model '/no/model'"),
    ('analysis', ['landscape', 'a', 'b', 'c'], r'landscape takes'),
    ('analysis', ['alignment', '/no/ckpt.pt'], r"'/no/ckpt.pt' is neither a ckpt.pt"),
    ('analysis', ['probe', 'gpt2', '/no/such', '/no/run/ckpt.pt'], r"probe: no source '/no/such', '/no/run/ckpt.pt': "
                                                                    r"use ckpt.pt files, run directories"),
    ('analysis', ['probe', 'scratch', '--model', '3x200'], r"--model '3x200': use gpt2"),
    ('analysis', ['probe', 'scratch', '--img_size', 'big'], r"--img_size 'big': expected an integer"),
    ('analysis', ['curves', 'x', '--grid', 'big'], r"--grid 'big': expected an integer"),
    ('analysis', ['curves', '{tmp}'], r'no metrics at .*metrics.jsonl'),
    ('analysis', ['curves', '{tmp}/empty.jsonl'], r'empty.jsonl holds no evaluations yet'),
    ('analysis', ['curves', '{tmp}/cut.jsonl'], r'cut.jsonl, line 2: not a JSON object'),
    ('analysis', ['curves', '{tmp}/list.jsonl'], r'list.jsonl, line 1: not an evaluation of bridge.py'),
    ('analysis', ['curves', '{tmp}/badconfig'], r'badconfig/config.json is not JSON'),
    ('analysis', ['tsne', '{run}', '--images', '-1'], r'--images -1: must be >= 0'),
    ('analysis', ['tsne', '{run}', '--images', '1'], r'--images 1: t-SNE and the silhouette need at least 2 images '
                                                     r'of each of the 4 classes'),
    ('analysis', ['landscape', '{run}', '--grid', '1'], r'--grid 1: a surface needs at least 2 points per axis'),
    ('analysis', ['landscape', '{run}', '--grid', '0'], r'--grid 0: must be > 0'),
    ('analysis', ['landscape', '{run}', '--batches', '0'], r'--batches 0: must be > 0'),
    ('analysis', ['landscape', '{run}', '--span', 'nan'], r'--span nan: expected a finite number'),
    ('analysis', ['tsne', '{run}', '--dataset', 'foo'], r"--dataset 'foo' is not one of , cifar10, cifar100, "
                                                        r"tinyimagenet, folder"),
    ('analysis', ['outliers', '{run}', '--out', '{tmp}/junk.pt/fig'], r'--out .*junk.pt/fig: cannot create its folder'),
    ('analysis', ['outliers', '{tmp}/tensor.pt'], r'tensor.pt holds no state dict of tensors to count \(a Tensor\)'),
    ('analysis', ['outliers', '{tmp}/empty.pt'], r'empty.pt holds no state dict of tensors to count \(a dict, empty\)'),
    # bench.py
    ('bench', ['--stream', '{folder}/train', '--steps', '100'], r'--stream .*train: 128 images, fewer than'),
])
def test_user_errors(main, argv, message, folder, bridged, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('errors')
    (tmp / 'junk.pt').write_bytes(b'not a checkpoint at all')
    torch.save(dict(model={}, model_config={}, config={}, iter=3, metrics={}), tmp / 'old.pt')  # before 2026-11-30
    (tmp / 'empty.jsonl').write_text('')
    (tmp / 'cut.jsonl').write_text('{"iter": 1, "epoch": 1, "train_acc": 0.5, "test_acc": 0.5}\n{"iter": 2, "ep')
    (tmp / 'list.jsonl').write_text('[1, 2]\n')
    (tmp / 'badconfig').mkdir()
    (tmp / 'badconfig' / 'metrics.jsonl').write_text('{"iter": 1, "epoch": 1, "train_acc": 0.5, "test_acc": 0.5}\n')
    (tmp / 'badconfig' / 'config.json').write_text('{"stage": ')
    torch.save(torch.zeros(3), tmp / 'tensor.pt')
    torch.save({}, tmp / 'empty.pt')
    good = torch.load(bridged / 'bridge' / 'ckpt.pt', weights_only=True)
    torch.save(dict(good, model_config=dict(good['model_config'], rotary=True)), tmp / 'extra_key.pt')
    torch.save(dict(good, model_config=dict(good['model_config'], pool='mean')), tmp / 'pool_mean.pt')
    torch.save(dict(good, model=dict(good['model'], **{'head.weight': torch.zeros(4, 65)})), tmp / 'wide_head.pt')
    (tmp / 'flagless').mkdir()
    torch.save(dict(good, config={k: v for k, v in good['config'].items() if k != 'grad_clip'}),
               tmp / 'flagless' / 'ckpt.pt')
    three, one = (tmp_path_factory.getbasetemp() / name for name in ('three', 'one'))
    if not three.exists():
        make_folder(three, n_classes=3, n_train=4, n_val=2)
        make_folder(one, n_classes=1, n_train=32, n_val=2)
    fill = dict(folder=folder, tmp=str(tmp), run=str(bridged / 'bridge'), three=str(three), one=str(one))
    before = (bridged / 'bridge' / 'ckpt.pt').read_bytes()
    with pytest.raises(UserError, match=message):
        dict(bridge=bridge, analysis=analysis, bench=bench, sample=sample)[main].main([a.format(**fill) for a in argv])
    assert (bridged / 'bridge' / 'ckpt.pt').read_bytes() == before and not os.path.exists(tmp / 'run')
