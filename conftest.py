"""Fixtures of the tests: tiny GPT-2s written by transformers, PNG image folders, tiny runs.
Everything is made here, so the tests run offline and on the CPU."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
# a 2-layer, 64-wide scratch GPT-2 on 16x16 images in 4x4 patches, on the CPU, without compile
# float32: the same numbers on every CPU (--dtype auto is bfloat16 on CPUs with bf16 instructions;
# that path has its own tests)
TINY = ['--init_from', 'scratch', '--model', '2x64', '--img_size', '16', '--patch_size', '4',
        '--device', 'cpu', '--compile', 'False', '--num_workers', '0', '--log_interval', '5',
        '--dtype', 'float32']
ENV = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}  # a subprocess's


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU; skipped without one (see .ci/gpu)')


def hf_gpt2(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=300, seed=0):
    """A random GPT2LMHeadModel of transformers (the reference), eval mode, eager attention."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                     vocab_size=vocab_size, bos_token_id=0, eos_token_id=0,
                     attn_implementation='eager')
    hf = GPT2LMHeadModel(cfg).eval()
    # HF's init (std 0.02, LayerNorm (1, 0), zero biases) hides mistakes: with tiny activations,
    # exact and tanh GELU agree to 1e-6. Give every tensor a trained-like scale.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if 'ln_' in name or name.endswith('bias'):
                p.add_(0.1 * torch.randn_like(p))
            elif '.h.' in name:  # Conv1D weights are [in, out]: std 1/sqrt(fan_in) keeps O(1)
                p.mul_(1 / (0.02 * p.shape[0] ** 0.5))
    return hf


@pytest.fixture(scope='session')
def hf_dir(tmp_path_factory):
    """A tiny GPT-2 saved by transformers' save_pretrained: config.json + model.safetensors."""
    hf = hf_gpt2()
    path = tmp_path_factory.mktemp('hf') / 'tiny-gpt2'
    hf.save_pretrained(path)
    return hf, str(path)


def tokens(vocab=300, B=2, T=20, seed=1):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def make_folder(root, n_classes=4, n_train=32, n_val=16, size=16, seed=0, noise=40):
    """An ImageNet-style tree of PNGs: class k is a colour (a row of a fixed palette) plus noise."""
    rng = np.random.default_rng(seed)
    palette = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40],
                        [40, 200, 200], [200, 40, 200]])
    for split, n in (('train', n_train), ('val', n_val)):
        for k in range(n_classes):
            os.makedirs(os.path.join(root, split, f'class{k}'), exist_ok=True)
            for i in range(n):
                img = palette[k] + rng.normal(0, noise, (size, size, 3))
                img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
                img.save(os.path.join(root, split, f'class{k}', f'{i}.png'))
    return str(root)


@pytest.fixture(scope='session')
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('img') / 'colors')


def run(folder, out, *args):
    """bridge.py in this process on the folder, TINY; returns the final metrics."""
    import bridge
    return bridge.main(['--dataset', 'folder', '--data_dir', folder, '--out_dir', str(out),
                        *TINY, *args])


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]


def cli(*argv, timeout=300, env=None):
    """A script of the project run as a user runs it -> CompletedProcess (text)."""
    return subprocess.run([sys.executable, *argv], cwd=HERE, capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


@pytest.fixture(scope='session')
def bridged(folder, tmp_path_factory):
    """A tiny bridge run (100% random labels) and a run on the true labels, for the figures."""
    out = tmp_path_factory.mktemp('runs')
    args = ['--max_iters', '30', '--batch_size', '32', '--eval_interval', '10', '--lr', '3e-3']
    run(folder, out / 'bridge', *args)
    run(folder, out / 'real', '--stage', 'finetune', *args)
    return out


@pytest.fixture(scope='session')
def digits(tmp_path_factory):
    """scikit-learn's 1,797 handwritten 8x8 digits as an image folder, by the README's command: 10
    classes that a colour alone does not tell apart."""
    import prepare
    root = tmp_path_factory.mktemp('digits')
    prepare.main(['digits', str(root)])
    return str(root)


def write_patterns(root, kind, n=48, seed=0):
    """kind 'smooth': low-frequency grey images (strongly correlated patches: an anisotropic
    Sigma_x); 'noise': independent uniform pixels (Sigma_x ~ identity). Four arbitrary classes."""
    g = torch.Generator().manual_seed(seed)
    for split in ('train', 'val'):
        for k in range(4):
            os.makedirs(os.path.join(root, split, f'c{k}'), exist_ok=True)
            for i in range(n if split == 'train' else 4):
                if kind == 'smooth':
                    low = torch.rand(1, 1, 4, 4, generator=g) * 255
                    img = torch.nn.functional.interpolate(low, size=16, mode='bilinear')[0]
                    img = img.expand(3, 16, 16)
                else:
                    img = torch.rand(3, 16, 16, generator=g) * 255
                pixels = img.permute(1, 2, 0).numpy().astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, split, f'c{k}', f'{i}.png'))
    return str(root)
