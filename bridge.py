"""
Random-label bridge training, then fine-tuning: the two stages of Luo & Shen (TMLR 2026).

  python bridge.py --stage bridge --freeze 0-5                        # 1: GPT-2 on images with random labels
  python bridge.py --stage finetune --init_from out/bridge/ckpt.pt    # 2: the same network on the real labels
  python bridge.py --stage eval --init_from out/finetune/ckpt.pt      # test accuracy of a checkpoint
  torchrun --standalone --nproc_per_node=8 bridge.py ...              # several GPUs (DDP)

Every flag is a module-level default below; `--key value` or `--key=value` overrides it, converted to the
default's type. Ctrl-C (or SIGTERM) stops at the next log line with a checkpoint; `--init_from resume` then
continues bit for bit.
"""
import contextlib
import difflib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from data import augment, eval_batches, load_dataset, random_labels, train_batches
from model import GPT, GPTConfig, OFFICIAL, UserError

# ----------------------------------------------------------------------------- flags (defaults: the paper's CIFAR-10 bridge run)
stage = 'bridge'              # bridge: random labels | finetune: real labels | eval: test accuracy of --init_from
init_from = 'gpt2-medium'     # gpt2 | gpt2-medium | gpt2-large | gpt2-xl | scratch | resume | PATH (HF dir/file, or a ckpt.pt)
model = 'gpt2-medium'         # architecture for --init_from scratch, the paper's random-initialized baseline
n_layer = 0                   # > 0: depth of a scratch model (small experiments)
n_head = 0                    # > 0: heads of a scratch model
n_embd = 0                    # > 0: width of a scratch model
freeze = 'none'               # kept at their loaded values: '0-5' = the first five blocks (see model.GPT.freeze)
reinit_head = False           # fresh classifier on a ckpt.pt (always done when the class count differs)
dataset = 'cifar10'           # cifar10 | cifar100 | folder (DATA_DIR/train/<class>/*, DATA_DIR/val/<class>/*)
data_dir = 'data'             # datasets live here; CIFAR is downloaded into it once
img_size = 224                # images are resized to this square (the paper's code: 224, CIFAR upsampled)
patch_size = 16               # patch side in pixels: (224 / 16)^2 = 196 tokens
pool = 'last'                 # last token (paper's code, sees all patches under the causal mask) | mean
causal = True                 # GPT-2's causal attention (paper's code) | False: bidirectional
dropout = 0.1                 # GPT-2's dropout, active in the paper's code
aug = 'rrc'                   # rrc: RandomResizedCrop(0.2-1) + flip, bicubic (paper) | crop: pad-4 crop + flip | none
random_label_fraction = -1.0  # share of training labels replaced at random; -1: 1.0 for bridge, 0.0 for finetune
random_label_mode = 'uniform' # uniform: any class, true one included | wrong: any other class (the author's code)
epochs = 400                  # passes over the training set (the paper's code: 400 for the bridge stage)
max_iters = 0                 # > 0: exactly this many optimizer steps instead of epochs
batch_size = 64               # images per process per micro-step (the paper's code: 64 per GPU)
grad_accum = 1                # micro-steps per optimizer step
lr = 0.0                      # peak learning rate; 0: blr * images per step / 256 (the paper's code, from MAE)
blr = 1e-3                    # base learning rate of that rule
weight_decay = 0.05           # AdamW decay on matrices and embeddings
warmup_epochs = 5.0           # linear warmup, then half-cosine to min_lr
min_lr = 1e-6                 # learning rate at the end of the cosine
label_smoothing = 0.1         # on the training loss (the paper's code smooths in both stages)
grad_clip = 1.0               # clip the global gradient norm; 0: off
seed = 0                      # seeds the random labels, data order, augmentation, dropout and new weights
device = 'auto'               # auto (cuda, else mps, else cpu) | cuda | cuda:N | mps | cpu
dtype = 'auto'                # auto: bfloat16 on CUDA (float16 before Ampere), else float32 | bfloat16 | float16 | float32
compile = True                # torch.compile the model: faster steps after a minute of compiling (False for CPU smoke runs)
out_dir = ''                  # checkpoint, config.json and metrics.jsonl go here; '': out/<stage>
eval_interval = 0             # optimizer steps between evaluations + checkpoints; 0: once per epoch
log_interval = 20             # optimizer steps between progress lines (the only host syncs of the loop)
num_workers = min(4, os.cpu_count() or 1)  # DataLoader workers for folders (decoding once, or streaming)
memory_gb = 16.0              # a folder whose uint8 copy is at most this large is kept on the device; else streamed
peak_tflops = 989.0           # the accelerator's dense bf16 peak, for MFU (H100/H200 SXM: 989)
wandb = False                 # also log to Weights & Biases
wandb_project = 'bridge'      # its project name
FLAGS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (bool, int, float, str))}
CHOICES = dict(stage=('bridge', 'finetune', 'eval'), model=tuple(OFFICIAL), dataset=('cifar10', 'cifar100', 'folder'),
               pool=('last', 'mean'), aug=('rrc', 'crop', 'none'), random_label_mode=('uniform', 'wrong'),
               dtype=('auto', 'bfloat16', 'float16', 'float32'))
# flags a resumed run may change; the rest are the run's and come from its checkpoint
RESUME_FLAGS = {'stage', 'init_from', 'out_dir', 'device', 'compile', 'eval_interval', 'log_interval', 'num_workers',
                'memory_gb', 'data_dir', 'peak_tflops', 'wandb', 'wandb_project', 'epochs', 'max_iters'}
# numeric flags that must be at least 1; every other number must be >= 0 (random_label_fraction: or -1)
AT_LEAST_ONE = ('epochs', 'batch_size', 'grad_accum', 'log_interval', 'img_size', 'patch_size')
# the model's own settings that a stage-1 checkpoint hands on to stage 2 unless given on the command line
HANDED_ON = ('img_size', 'pool', 'causal', 'dropout')


def parse_flags(defaults, argv, choices=None):
    """['--lr', '1e-4', '--compile=False', '--wandb'] -> ({**defaults, lr: 1e-4, ...}, {names given})."""
    cfg, given, args = dict(defaults), set(), list(argv)
    while args:
        arg = args.pop(0)
        key, eq, val = arg[2:].partition('=')
        if not arg.startswith('--') or key not in cfg:
            close = difflib.get_close_matches(key if arg.startswith('--') else arg, cfg, n=3, cutoff=0.5)
            raise UserError(f"unknown flag '{arg}'" + (f"; did you mean {', '.join('--' + c for c in close)}?" if close
                            else f"; flags are --key value or --key=value with key one of: {', '.join(cfg)}"))
        if not eq:  # a bare boolean flag means True
            val = args.pop(0) if args and not (isinstance(cfg[key], bool) and args[0].startswith('--')) else (
                'True' if isinstance(cfg[key], bool) else None)
            if val is None:
                raise UserError(f"--{key} needs a value (default {cfg[key]!r})")
        cfg[key] = convert(key, val, defaults[key], (choices or {}).get(key))
        given.add(key)
    return cfg, given


def convert(key, val, default, choices=None):
    """A command-line string -> the type of the flag's default, or a UserError that says what is accepted."""
    if isinstance(default, bool):
        if val.lower() not in ('true', 'false', '1', '0', 'yes', 'no'):
            raise UserError(f"--{key} {val!r}: expected True or False")
        return val.lower() in ('true', '1', 'yes')
    try:
        out = type(default)(val)
    except ValueError:
        raise UserError(f"--{key} {val!r}: expected {'an integer' if isinstance(default, int) else 'a number'}") from None
    if choices and out not in choices:
        close = difflib.get_close_matches(out, choices, n=1)
        raise UserError(f"--{key} {val!r} is not one of {', '.join(choices)}" + (f"; did you mean {close[0]}?" if close else ''))
    return out


# ----------------------------------------------------------------------------- setup
def setup_device(c):
    """-> (device, autocast dtype, rank, world size, DDP?). torchrun sets RANK: then one GPU (or CPU process) per rank."""
    ddp = 'RANK' in os.environ
    rank, world = (int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])) if ddp else (0, 1)
    name = c.device if c.device != 'auto' else 'cuda' if torch.cuda.is_available() else (
        'mps' if torch.backends.mps.is_available() else 'cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    if name == 'cuda' and ddp:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: use auto, cuda, cuda:N, mps or cpu") from None
    if ddp:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dt = c.dtype if c.dtype != 'auto' else ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') \
        if device.type == 'cuda' else 'float32'
    return device, getattr(torch, dt), rank, world, ddp


def read_checkpoint(path):
    """Our ckpt.pt -> dict, or None when path is some other weights file (an HF .bin)."""
    if not os.path.isfile(path) or path.endswith('.safetensors'):
        return None
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    return ckpt if isinstance(ckpt, dict) and {'model', 'model_config'} <= ckpt.keys() else None


def build_model(c, n_classes, ckpt, resuming=False):
    """The network of --init_from with an image path for n_classes, its weights printed as they load."""
    image = dict(vocab_size=0, n_classes=n_classes, img_size=c.img_size, patch_size=c.patch_size, pool=c.pool,
                 causal=c.causal, dropout=c.dropout)
    if (c.n_layer or c.n_head or c.n_embd) and c.init_from != 'scratch':
        raise UserError("--n_layer/--n_head/--n_embd shape a scratch model: use them with --init_from scratch")
    if ckpt is not None:  # a checkpoint of ours: stage 1 -> stage 2 (or a resume)
        mc = {**ckpt['model_config'], **{k: image[k] for k in HANDED_ON + ('patch_size',)}, 'n_classes': n_classes}
        net = GPT(GPTConfig(**mc))
        sd = ckpt['model']
        fresh_head = not resuming and (c.reinit_head or sd['head.weight'].size(0) != n_classes)
        if fresh_head and c.stage == 'eval':
            raise UserError(f"{c.init_from} classifies {sd['head.weight'].size(0)} classes, {c.dataset} has {n_classes}")
        if fresh_head:
            sd = {k: v for k, v in sd.items() if not k.startswith('head.')}
        net.load_state_dict(sd, strict=not fresh_head)
        print(f"loaded {c.init_from if not resuming else c.out_dir} (step {ckpt['iter']} of its {ckpt['config']['stage']} run): "
              + ', '.join(f"{k} {mc[k]}" for k in ('n_layer', 'n_embd', 'img_size', 'patch_size', 'pool', 'causal'))
              + (f"; new {n_classes}-class head" if fresh_head else ''))
    elif c.init_from == 'scratch':
        arch = {**OFFICIAL[c.model], **{k: getattr(c, k) for k in ('n_layer', 'n_head', 'n_embd') if getattr(c, k) > 0}}
        if arch['n_embd'] % arch['n_head']:
            raise UserError(f"--n_embd {arch['n_embd']} is not divisible by --n_head {arch['n_head']}")
        net = GPT(GPTConfig(**arch, **image))
        print(f"scratch: GPT-2 {arch['n_layer']} layers x {arch['n_embd']} wide, {arch['n_head']} heads "
              f"({c.model}{' resized by --n_layer/--n_head/--n_embd' * (arch != OFFICIAL[c.model])}), GPT-2's random init")
    else:
        net = GPT.from_pretrained(c.init_from, **image)
    return net


def get_lr(it, c, peak, warmup_iters, total_iters):
    """Linear warmup to peak, then half-cosine down to min_lr at total_iters (the paper's code, per iteration)."""
    if it < warmup_iters:
        return peak * (it + 1) / warmup_iters
    progress = (it - warmup_iters) / max(1, total_iters - warmup_iters)
    return c.min_lr + 0.5 * (peak - c.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(net, d, c, ctx, rank, world):
    """Loss (no smoothing) and accuracy on the whole test set against the true labels; all ranks agree."""
    net.eval()
    s = torch.zeros(3, device=d['mean'].device)  # loss sum, correct, count
    for x, y in eval_batches(*d['test'], c.batch_size, rank, world, c.num_workers):
        with ctx:
            logits = net(augment(x, 'eval', c.img_size, d['mean'], d['std'])).float()
        s[0] += F.cross_entropy(logits, y, reduction='sum')
        s[1] += (logits.argmax(1) == y).sum()
        s[2] += len(y)  # a Python number into a kernel argument: no host-device copy, no sync
    if world > 1:
        dist.all_reduce(s)
    net.train()
    loss, correct, n = s.tolist()
    return loss / n, correct / n


def save_checkpoint(path, obj):
    """Written to a temporary file, then renamed: a crash mid-write never leaves a broken ckpt.pt."""
    torch.save(obj, path + '.tmp')
    os.replace(path + '.tmp', path)


# ----------------------------------------------------------------------------- the two stages
def main(argv):
    flags, given = parse_flags(FLAGS, argv, CHOICES)
    for k, v in flags.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < (1 if k in AT_LEAST_ONE else 0) and not (
                k == 'random_label_fraction' and v == -1):
            raise UserError(f"--{k} {v}: must be {'at least 1' if k in AT_LEAST_ONE else '>= 0'}"
                            + (" (or -1: the stage's default)" if k == 'random_label_fraction' else ''))
    c = SimpleNamespace(**flags)
    c.out_dir = c.out_dir or os.path.join('out', c.stage)
    ckpt, resuming = None, c.init_from == 'resume'
    if resuming:  # the run's own config, except the few flags a resume may change
        path = os.path.join(c.out_dir, 'ckpt.pt')
        if (ckpt := read_checkpoint(path)) is None:
            raise UserError(f"--init_from resume: no checkpoint at {path} (set --out_dir or --stage to the run's)")
        if bad := sorted(given - RESUME_FLAGS):
            raise UserError(f"--init_from resume continues {path} with its own settings; cannot change --{bad[0]} "
                            f"(resume may change: {', '.join(sorted(RESUME_FLAGS))})")
        c = SimpleNamespace(**{**ckpt['config'], **{k: getattr(c, k) for k in given - {'init_from'}}, 'out_dir': c.out_dir})
    elif c.init_from not in OFFICIAL and c.init_from != 'scratch':
        if (ckpt := read_checkpoint(c.init_from)) is not None:  # stage 1 -> stage 2: the network keeps its image settings
            c.patch_size = ckpt['model_config']['patch_size']
            for k in HANDED_ON:
                setattr(c, k, getattr(c, k) if k in given else ckpt['model_config'][k])
    if c.stage == 'eval' and ckpt is None:
        raise UserError(f"--stage eval needs --init_from a ckpt.pt written by bridge.py, not '{c.init_from}'")
    device, ptdtype, rank, world, ddp = setup_device(c)
    with contextlib.redirect_stdout(sys.stdout if rank == 0 else open(os.devnull, 'w')):  # one rank talks
        try:
            return run(c, ckpt, resuming, device, ptdtype, rank, world, ddp)
        finally:
            if ddp:
                dist.destroy_process_group()


def run(c, ckpt, resuming, device, ptdtype, rank, world, ddp):
    print(f"device {device}, {ptdtype}, {world} process{'es' * (world > 1)}, compile {c.compile}")
    if ddp and rank > 0:
        dist.barrier()  # rank 0 downloads the data first
    d = load_dataset(c.dataset, c.data_dir, c.img_size, device, c.memory_gb, c.num_workers)
    if ddp and rank == 0:
        dist.barrier()
    ctx = torch.autocast(device.type, dtype=ptdtype) if ptdtype != torch.float32 else contextlib.nullcontext()
    torch.manual_seed(c.seed)  # new weights depend on the seed alone: analysis.py rebuilds a run's step 0 this way
    net = build_model(c, len(d['classes']), ckpt, resuming).to(device)
    if c.stage == 'eval':
        test_loss, test_acc = evaluate(net, d, c, ctx, rank, world)
        print(json.dumps(out := dict(init_from=c.init_from, dataset=c.dataset, test_loss=test_loss, test_acc=test_acc)))
        return out

    # the method: the bridge stage trains on random labels, fine-tuning on the real ones
    true_labels = d['train'][1]
    if resuming:
        train_labels = ckpt['train_labels']
    else:
        fraction = c.random_label_fraction if c.random_label_fraction >= 0 else {'bridge': 1.0, 'finetune': 0.0}[c.stage]
        train_labels = random_labels(true_labels, len(d['classes']), fraction, c.seed, wrong=c.random_label_mode == 'wrong')
        print(f"{c.stage}: {fraction:.0%} of the {len(true_labels)} training labels drawn at random "
              f"({c.random_label_mode}, seed {c.seed}); {(train_labels != true_labels.cpu()).float().mean():.1%} now differ "
              f"from the truth; test labels are the true ones")
    train_labels = train_labels.to(device)

    net.freeze(c.freeze)
    raw = net
    micro_per_epoch = len(true_labels) // (c.batch_size * world)
    steps_per_epoch = micro_per_epoch / c.grad_accum
    total_iters = c.max_iters or max(1, round(c.epochs * steps_per_epoch))
    warmup_iters = round(c.warmup_epochs * steps_per_epoch)
    eval_every = c.eval_interval or max(1, round(steps_per_epoch))
    peak_lr = c.lr or c.blr * c.batch_size * c.grad_accum * world / 256
    print(f"{total_iters} steps ({steps_per_epoch:.1f} per epoch) of {c.batch_size * c.grad_accum * world} images; "
          f"lr {peak_lr:.2e}" + ('' if c.lr else f" = blr {c.blr:g} x {c.batch_size * c.grad_accum * world} / 256")
          + f", warmup {warmup_iters} steps, cosine to {c.min_lr:g}; eval every {eval_every} steps")
    if not any(p.requires_grad for p in net.parameters()):
        raise UserError(f"--freeze {c.freeze} leaves nothing to train")
    opt = net.configure_optimizers(c.weight_decay, peak_lr, (0.9, 0.999), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=ptdtype == torch.float16)
    it, elapsed = 0, 0.0
    if resuming:
        opt.load_state_dict(ckpt['optimizer'])
        scaler.load_state_dict(ckpt['scaler'])
        it, elapsed = ckpt['iter'], ckpt['elapsed_s']
        print(f"resuming {c.out_dir} at step {it}")
    compiled = torch.compile(raw) if c.compile else raw  # evaluation uses it too (one more graph, eval mode)
    net = DDP(compiled, device_ids=[device.index] if device.type == 'cuda' else None) if ddp else compiled
    if rank == 0:
        os.makedirs(c.out_dir, exist_ok=True)
        with open(os.path.join(c.out_dir, 'config.json'), 'w') as f:
            json.dump({**vars(c), 'model_config': asdict(raw.config)}, f, indent=1)
    if c.wandb and rank == 0:
        try:
            import wandb as wb
        except ImportError:
            raise UserError("--wandb True needs the wandb package: pip install wandb") from None
        wb.init(project=c.wandb_project, config=vars(c))

    ckpt_path = os.path.join(c.out_dir, 'ckpt.pt')
    trainable = [p for p in raw.parameters() if p.requires_grad]
    flops = raw.flops_per_image()
    data = train_batches(d['train'][0], train_labels, c.batch_size, it * c.grad_accum, c.seed, rank, world, c.num_workers)
    window = torch.zeros(2, 3, device=device)  # [since last log, since last eval] x [loss sum, correct, count]
    stop = []  # SIGINT/SIGTERM land here; the loop stops at the next log line, between two whole steps

    def on_signal(signum, frame):
        stop.append(signum)
        if len(stop) > 1:  # asked twice: quit now, without a checkpoint
            raise KeyboardInterrupt
    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if c.compile:
        print("compiling the model: the first steps take a minute or more")
    metrics, t0, t_log = {}, time.time() - elapsed, time.time()
    try:
        while it < total_iters:
            lr_now = get_lr(it, c, peak_lr, warmup_iters, total_iters)
            for group in opt.param_groups:
                group['lr'] = lr_now
            torch.manual_seed(hash((c.seed, rank, it)))  # augmentation and dropout depend on (seed, rank, step) only
            for micro in range(c.grad_accum):
                x, y = next(data)
                x = augment(x, c.aug, c.img_size, d['mean'], d['std'])
                if ddp:  # all-reduce gradients on the last micro-step only
                    net.require_backward_grad_sync = micro == c.grad_accum - 1
                with ctx:
                    logits = net(x).float()
                    loss = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
                scaler.scale(loss / c.grad_accum).backward()
                window[:, 0] += loss.detach() * len(y)
                window[:, 1] += (logits.detach().argmax(1) == y).sum()
                window[:, 2] += len(y)
            if c.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(trainable, c.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            it += 1

            last = it == total_iters
            if it % c.log_interval == 0 or it % eval_every == 0 or last:
                log = window[0].clone()
                stopping = torch.tensor(float(bool(stop)), device=device)
                if ddp:  # every rank sees the same loss and the same stop decision
                    dist.all_reduce(log)
                    dist.all_reduce(stopping)
                (loss_sum, correct, n), stopping = log.tolist(), stopping.item() > 0
                window[0] = 0
                if not math.isfinite(loss_sum):
                    raise UserError(f"loss is {loss_sum / n} at step {it}: stopped; "
                                    + (f"{ckpt_path} keeps the last good checkpoint" if os.path.exists(ckpt_path) else
                                       "no checkpoint was written") + "; try a lower --lr" + (" or --dtype bfloat16" * (ptdtype == torch.float16)))
                now = time.time()
                imgs = n / (now - t_log)
                mfu = f" | mfu {imgs / world * flops / (c.peak_tflops * 1e12):.1%}" if device.type == 'cuda' else ''
                eta = (total_iters - it) * c.batch_size * c.grad_accum * world / imgs
                print(f"step {it}/{total_iters} (epoch {it / steps_per_epoch:.2f}) | loss {loss_sum / n:.4f} | "
                      f"acc {correct / n:.1%} | lr {lr_now:.2e} | {imgs:.0f} img/s{mfu} | eta {int(eta // 3600)}:{time.strftime('%M:%S', time.gmtime(eta))}")
                t_log = now
                if it % eval_every == 0 or last or stopping:
                    metrics = dict(iter=it, epoch=round(it / steps_per_epoch, 4), lr=lr_now)
                    if ddp:
                        dist.all_reduce(window[1])
                    (loss_sum, correct, n), window[1] = window[1].tolist(), 0
                    metrics['train_loss'], metrics['train_acc'] = loss_sum / n, correct / n
                    metrics['test_loss'], metrics['test_acc'] = evaluate(compiled, d, c, ctx, rank, world)
                    metrics['elapsed_s'] = round(time.time() - t0, 2)
                    print(f"eval step {it}: train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.1%} "
                          f"(on the labels trained on) | test loss {metrics['test_loss']:.4f} acc {metrics['test_acc']:.2%}"
                          f" | saved {ckpt_path}")
                    if rank == 0:
                        save_checkpoint(ckpt_path, dict(model=raw.state_dict(), model_config=asdict(raw.config),
                                                        optimizer=opt.state_dict(), scaler=scaler.state_dict(),
                                                        config=vars(c), iter=it, elapsed_s=metrics['elapsed_s'],
                                                        train_labels=train_labels.cpu(), metrics=metrics))
                        with open(os.path.join(c.out_dir, 'metrics.jsonl'), 'a') as f:
                            f.write(json.dumps(metrics) + '\n')
                        if c.wandb:
                            wb.log(metrics, step=it)
                if stopping:
                    print(f"stopped by signal at step {it}; continue with: python bridge.py --stage {c.stage} "
                          f"--out_dir {c.out_dir} --init_from resume")
                    break
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return metrics


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}")
