"""
Training speed, ours against what people would otherwise write: transformers' GPT2Model fed
`inputs_embeds` (the paper's code and FPT do this), with the same patch embedding, head, AdamW, batch,
gradient clipping and loss. After warm-up (and compilation) the two alternate in rounds in one process,
so that machine noise hits both. Also times the data pipeline alone (a batch gathered and augmented on
the device). The last line printed is one JSON object.

  python bench.py --model gpt2-medium --batch_size 256                       # a GPU: bf16 + compile vs HF fp16 eager
  python bench.py --n_layer 4 --n_head 4 --n_embd 256 --img_size 32 --patch_size 4 --device cpu --compile False
"""
import json
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from bridge import parse_flags, setup_device
from data import augment, train_batches
from model import GPT, GPTConfig, OFFICIAL, UserError

# flags named as in bridge.py
model = 'gpt2-medium'     # architecture (random weights: speed does not depend on them)
n_layer = 0               # > 0: override the depth
n_head = 0                # > 0: override the heads
n_embd = 0                # > 0: override the width
img_size = 224            # image side
patch_size = 16           # patch side: (img_size / patch_size)^2 tokens
batch_size = 64           # images per step
dropout = 0.1             # as in training (GPT-2's and the paper's code)
dtype = 'auto'            # ours: auto (bfloat16 on CUDA, float32 elsewhere) | bfloat16 | float16 | float32
compile = True            # ours: torch.compile
hf_dtype = 'auto'         # transformers: auto (float16 autocast + GradScaler on CUDA, as the paper's code; float32 elsewhere)
hf_compile = False        # transformers: torch.compile (the paper's code and FPT run eager)
device = 'auto'           # auto | cuda | cpu | mps
steps = 20                # timed steps per model, in `rounds` alternating blocks
rounds = 4                # alternating blocks
warmup = 3                # untimed steps per model first (compilation happens here)
peak_tflops = 989.0       # the accelerator's dense bf16 peak for MFU (H100/H200 SXM: 989)
seed = 0
FLAGS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (bool, int, float, str))}
CHOICES = dict(model=tuple(OFFICIAL), dtype=('auto', 'bfloat16', 'float16', 'float32'), hf_dtype=('auto', 'bfloat16', 'float16', 'float32'))


class HFImageGPT2(nn.Module):
    """The usual way: patch embedding -> transformers' GPT2Model(inputs_embeds=...) -> last token -> head."""

    def __init__(self, config):
        super().__init__()
        from transformers import GPT2Config, GPT2Model
        hf = GPT2Config(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, n_positions=config.block_size,
                        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout)
        self.patch = nn.Conv2d(3, config.n_embd, config.patch_size, stride=config.patch_size)
        self.gpt2 = GPT2Model(hf)
        self.head = nn.Linear(config.n_embd, config.n_classes)

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose(1, 2)  # (B, T, C)
        return self.head(self.gpt2(inputs_embeds=x).last_hidden_state[:, -1])


def trainer(net, opt, dt, device):
    """-> step(x, y): one training step (forward, loss, backward, clip, AdamW) under autocast dt."""
    ctx = torch.autocast(device.type, dtype=dt, enabled=dt != torch.float32)
    scaler = torch.amp.GradScaler(device.type, enabled=dt == torch.float16)
    params = [p for p in net.parameters() if p.requires_grad]

    def step(x, y):
        with ctx:
            loss = F.cross_entropy(net(x).float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return step


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def main(argv):
    flags, _ = parse_flags(FLAGS, argv, CHOICES)
    c = SimpleNamespace(**flags)
    device, ours_dt, _, _, _ = setup_device(c)
    hf_dt = getattr(torch, c.hf_dtype if c.hf_dtype != 'auto' else 'float16' if device.type == 'cuda' else 'float32')
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError("bench.py compares against transformers: pip install transformers") from None
    arch = {**OFFICIAL[c.model], **{k: getattr(c, k) for k in ('n_layer', 'n_head', 'n_embd') if getattr(c, k) > 0}}
    cfg = GPTConfig(**arch, vocab_size=0, n_classes=10, img_size=c.img_size, patch_size=c.patch_size, dropout=c.dropout)
    torch.manual_seed(c.seed)
    ours = GPT(cfg).to(device)
    theirs = HFImageGPT2(cfg).to(device)
    fused = device.type == 'cuda'
    steps = {'ours': trainer(torch.compile(ours) if c.compile else ours, ours.configure_optimizers(0.05, 1e-4, (0.9, 0.999), device.type), ours_dt, device),
             'hf': trainer(torch.compile(theirs) if c.hf_compile else theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=0.05,
                           **({'fused': True} if fused else {})), hf_dt, device)}
    print(f"{arch['n_layer']} layers x {arch['n_embd']} wide, {ours.n_patches} tokens per image, batch {c.batch_size}, {device}; "
          f"ours {ours_dt} compile={c.compile}, transformers {transformers.__version__} {hf_dt} compile={c.hf_compile}")
    x = torch.randn(c.batch_size, 3, c.img_size, c.img_size, device=device)
    y = torch.randint(0, 10, (c.batch_size,), device=device)
    memory = {}
    for name, step in steps.items():  # warm-up, compilation, and each model's peak memory on its own
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        for _ in range(c.warmup):
            step(x, y)
        sync(device)
        memory[name] = torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else None
    seconds = dict.fromkeys(steps, 0.0)
    per_round = max(1, c.steps // c.rounds)
    for _ in range(c.rounds):
        for name, step in steps.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(per_round):
                step(x, y)
            sync(device)
            seconds[name] += time.perf_counter() - t
    img_s = {name: per_round * c.rounds * c.batch_size / s for name, s in seconds.items()}

    # the data pipeline alone: CIFAR-sized uint8 images on the device -> a shuffled, augmented batch
    pool = torch.randint(0, 256, (10 * c.batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    batches = train_batches(pool, torch.zeros(len(pool), dtype=torch.long, device=device), c.batch_size)
    mean, std = torch.zeros(1, 3, 1, 1, device=device), torch.ones(1, 3, 1, 1, device=device)
    for _ in range(3):
        augment(next(batches)[0], 'rrc', c.img_size, mean, std)
    sync(device)
    t = time.perf_counter()
    for _ in range(c.steps):
        augment(next(batches)[0], 'rrc', c.img_size, mean, std)
    sync(device)
    data_img_s = c.steps * c.batch_size / (time.perf_counter() - t)

    flops = ours.flops_per_image()
    mfu = {k: v * flops / (c.peak_tflops * 1e12) if device.type == 'cuda' else None for k, v in img_s.items()}
    print(f"{'':8}{'img/s':>10}{'ms/step':>10}{'peak MB':>10}{'MFU':>8}")
    for name in steps:
        print(f"{name:8}{img_s[name]:10.1f}{1000 * c.batch_size / img_s[name]:10.1f}"
              f"{'-' if memory[name] is None else f'{memory[name]:.0f}':>10}{'-' if mfu[name] is None else f'{mfu[name]:.1%}':>8}")
    print(f"{'data':8}{data_img_s:10.1f}   (gather + rrc augment to {c.img_size}x{c.img_size}: {data_img_s / img_s['ours']:.1f}x ours)")
    print(f"ours / transformers: {img_s['ours'] / img_s['hf']:.2f}x")
    result = dict(ours_img_s=round(img_s['ours'], 2), hf_img_s=round(img_s['hf'], 2), ratio=round(img_s['ours'] / img_s['hf'], 3),
                  data_img_s=round(data_img_s, 1), mfu=None if mfu['ours'] is None else round(mfu['ours'], 4),
                  hf_mfu=None if mfu['hf'] is None else round(mfu['hf'], 4), ours_peak_mb=memory['ours'], hf_peak_mb=memory['hf'],
                  device=str(device), torch=torch.__version__, config=dict(flags, **arch))
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}")
