"""
Training speed, ours against what people would otherwise write: transformers' GPT2Model fed
`inputs_embeds` (the paper's code and FPT do this), with the same patch embedding, head, AdamW,
batch, gradient clipping and loss. After warm-up (and compilation) the two alternate in rounds in
one process, so that machine noise hits both. Also times the data pipeline alone (a batch gathered
and augmented on the device), or, with --stream, the streaming decode of an image folder. The last
line printed is one JSON object.

  python bench.py --model gpt2-medium --batch_size 256         # a GPU: bf16 + compile vs fp16 eager
  python bench.py --model 4x256 --img_size 32 --patch_size 4 --device cpu --compile False
  python bench.py --stream data/photos/train --img_size 224    # decode + resize, images/s per core
"""
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bridge import autocast_dtype, peak_flops
from configurator import UserError, parse, pick_device, run_cli, to_json
from data import Images, augment, scan, train_batches
from model import GPT, GPTConfig, architecture

model = 'gpt2-medium'    # architecture: an OpenAI size or LAYERSxWIDTH (random weights)
img_size = 224           # image side
patch_size = 16          # patch side: (img_size / patch_size)^2 tokens
batch_size = 64          # images per step
dropout = 0.1            # as in training (GPT-2's and the paper's code)
dtype = 'auto'           # ours: auto (bfloat16 on CUDA and bf16 CPUs, else float32) | bfloat16
compile = True           # ours: torch.compile
hf_dtype = 'auto'        # transformers: auto (CUDA: float16 + GradScaler as the paper's; CPU: fp32)
hf_compile = False       # transformers: torch.compile (the paper's code and FPT run eager)
device = 'auto'          # auto, cuda, cuda:N, cpu or mps
steps = 20               # timed steps per model, in `rounds` alternating blocks
rounds = 4               # alternating blocks
warmup = 3               # untimed steps per model first (compilation happens here)
seed = 0                 # the random weights and inputs
stream = ''              # an image folder (<class>/<image>): time its streaming decode instead
num_workers = 4          # --stream: the decoding processes

DTYPES = ('auto', 'bfloat16', 'float16', 'float32')
CHOICES = dict(dtype=DTYPES, hf_dtype=DTYPES)
RANGES = {k: (1, math.inf) for k in ('img_size', 'patch_size', 'batch_size', 'steps', 'rounds')}


class HFImageGPT2(nn.Module):
    """The usual way: patches -> transformers' GPT2Model(inputs_embeds) -> last token -> head."""

    def __init__(self, config):
        super().__init__()
        from transformers import GPT2Config, GPT2Model
        hf = GPT2Config(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                        n_positions=config.block_size, resid_pdrop=config.dropout,
                        embd_pdrop=config.dropout, attn_pdrop=config.dropout)
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


def build(c, device):
    """Both networks, of the same architecture -> ({name: training step}, our model)."""
    try:
        import transformers
    except ImportError:
        raise UserError("bench.py compares with transformers: pip install transformers") from None
    cfg = GPTConfig(**architecture(c.model), vocab_size=0, n_classes=10, img_size=c.img_size,
                    patch_size=c.patch_size, dropout=c.dropout)
    torch.manual_seed(c.seed)
    ours, theirs = GPT(cfg).to(device), HFImageGPT2(cfg).to(device)
    ours_dt = autocast_dtype(c.dtype, device)
    hf_dt = autocast_dtype(c.hf_dtype, device, on_cuda='float16')
    hf_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=0.05,
                               fused=device.type == 'cuda')
    ours_opt = ours.configure_optimizers(0.05, 1e-4, (0.9, 0.999))
    ours_net = torch.compile(ours) if c.compile else ours
    hf_net = torch.compile(theirs) if c.hf_compile else theirs
    steps = {'ours': trainer(ours_net, ours_opt, ours_dt, device),
             'hf': trainer(hf_net, hf_opt, hf_dt, device)}
    tokens = (cfg.img_size // cfg.patch_size) ** 2
    print(f"{cfg.n_layer} layers x {cfg.n_embd} wide, {tokens} tokens an image, batch "
          f"{c.batch_size}, {device}; ours {ours_dt} compile={c.compile}, transformers "
          f"{transformers.__version__} {hf_dt} compile={c.hf_compile}")
    return steps, ours, {'ours': ours_dt, 'hf': hf_dt}


def matmul_rate(dtype, n=1024, repeats=5):
    """FLOP/s of this CPU's n x n matmul at dtype on the threads in use, the best of repeats (so
    that the share of it a model reaches is not flattered by a slow moment)."""
    a, b = (torch.randn(n, n, generator=torch.Generator().manual_seed(k)).to(dtype) for k in (0, 1))
    a @ b  # the first call sets up the kernel
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def time_models(c, device, steps):
    """Warm-up (compilation, peak memory) of each, then `rounds` alternating timed blocks ->
    (images/s, peak MB) per model."""
    x = torch.randn(c.batch_size, 3, c.img_size, c.img_size, device=device)
    y = torch.randint(0, 10, (c.batch_size,), device=device)
    memory, seconds = {}, dict.fromkeys(steps, 0.0)
    for name, step in steps.items():
        compiling = ' (compiling)' * (name == 'ours' and c.compile)
        print(f"warming up {name}: {c.warmup} steps{compiling}")
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        for _ in range(c.warmup):
            step(x, y)
        sync(device)
        memory[name] = torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else None
    per_round = max(1, c.steps // c.rounds)
    for r in range(c.rounds):
        print(f"timing round {r + 1}/{c.rounds}: {per_round} steps of each")
        for name, step in steps.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(per_round):
                step(x, y)
            sync(device)
            seconds[name] += time.perf_counter() - t
    return {k: per_round * c.rounds * c.batch_size / s for k, s in seconds.items()}, memory


def time_augment(c, device):
    """The in-memory data pipeline alone: CIFAR-sized uint8 images on the device -> a shuffled,
    RandomResizedCrop-augmented batch at img_size -> images/s."""
    pool = torch.randint(0, 256, (10 * c.batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    batches = train_batches(pool, torch.zeros(len(pool), dtype=torch.long, device=device),
                            c.batch_size)
    mean, std = torch.zeros(1, 3, 1, 1, device=device), torch.ones(1, 3, 1, 1, device=device)
    for _ in range(3):
        augment(next(batches)[0], 'rrc', c.img_size, mean, std)
    sync(device)
    t = time.perf_counter()
    for _ in range(c.steps):
        augment(next(batches)[0], 'rrc', c.img_size, mean, std)
    sync(device)
    return c.steps * c.batch_size / (time.perf_counter() - t)


def time_stream(c, device):
    """--stream: the streaming path of bridge.py (DataLoader workers decode and resize, the batch is
    copied to the device) over steps batches, after one untimed batch -> JSON result."""
    samples, _ = scan(c.stream)  # FOLDER/<class>/<image>
    if len(samples) < (c.steps + 1) * c.batch_size:
        raise UserError(f"--stream {c.stream}: {len(samples)} images, fewer than (steps + 1) x "
                        f"batch_size = {(c.steps + 1) * c.batch_size}")
    labels = torch.zeros(len(samples), dtype=torch.long, device=device)
    batches = train_batches(Images(samples, c.img_size), labels, c.batch_size,
                            num_workers=c.num_workers)
    print(f"streaming {c.stream}: {len(samples)} images, decoded and resized to {c.img_size}x"
          f"{c.img_size} by {c.num_workers} worker{'s' * (c.num_workers != 1)}, {c.steps} batches "
          f"of {c.batch_size} timed")
    next(batches)
    sync(device)
    t = time.perf_counter()
    for _ in range(c.steps):
        next(batches)
    sync(device)
    img_s = c.steps * c.batch_size / (time.perf_counter() - t)
    print(f"stream: {img_s:.1f} images/s with {c.num_workers} worker{'s' * (c.num_workers != 1)}, "
          f"{img_s / max(1, c.num_workers):.1f} per worker")
    return dict(stream_img_s=round(img_s, 1), workers=c.num_workers, img_size=c.img_size,
                per_worker_img_s=round(img_s / max(1, c.num_workers), 1), device=str(device),
                torch=torch.__version__, cpus=os.cpu_count())


def main(argv):
    c = parse(argv, globals(), CHOICES, RANGES)[0]
    device = pick_device(c.device)
    print(f"{torch.get_num_threads()} CPU threads (OMP_NUM_THREADS sets them)")
    if c.stream:
        result = time_stream(c, device)
        print(to_json(result))
        return result
    steps, ours, dtypes = build(c, device)
    img_s, memory = time_models(c, device, steps)
    print(f"timing the data pipeline: {c.steps} augmented batches")
    data_img_s = time_augment(c, device)
    peaks = {name: peak_flops(device) for name in steps}  # a GPU's datasheet bf16 peak
    if device.type == 'cpu':  # a CPU's own matmul, at the dtype each model multiplies in
        peaks = {name: matmul_rate(dt) for name, dt in dtypes.items()}
        print("matmul rate of this CPU: " + ', '.join(f"{name} ({str(dtypes[name])[6:]}) "
              f"{peaks[name] / 1e9:.0f} GFLOP/s" for name in steps) + " (the MFU column's 100%)")
    mfu = {k: v * ours.flops_per_image() / peaks[k] if peaks[k] else None for k, v in img_s.items()}
    print(f"{'':8}{'img/s':>10}{'ms/step':>10}{'peak MB':>10}{'MFU':>8}")
    for name in steps:
        mb = '-' if memory[name] is None else f"{memory[name]:.0f}"
        print(f"{name:8}{img_s[name]:10.1f}{1000 * c.batch_size / img_s[name]:10.1f}{mb:>10}"
              f"{'-' if mfu[name] is None else format(mfu[name], '.1%'):>8}")
    print(f"{'data':8}{data_img_s:10.1f}   (gather + rrc to {c.img_size}x{c.img_size}: "
          f"{data_img_s / img_s['ours']:.1f}x ours)")
    print(f"ours / transformers: {img_s['ours'] / img_s['hf']:.2f}x")
    result = dict(ours_img_s=round(img_s['ours'], 2), hf_img_s=round(img_s['hf'], 2),
                  ratio=round(img_s['ours'] / img_s['hf'], 3), data_img_s=round(data_img_s, 1),
                  mfu=mfu['ours'], hf_mfu=mfu['hf'], ours_peak_mb=memory['ours'],
                  hf_peak_mb=memory['hf'], device=str(device), torch=torch.__version__,
                  config=vars(c))
    print(to_json(result))
    return result


if __name__ == '__main__':
    run_cli(main)
