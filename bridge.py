"""
Random-label bridge training, then fine-tuning: the two stages of Luo & Shen (TMLR 2026).

  python bridge.py --stage bridge --freeze 0-5                      # 1: random labels, partial
  python bridge.py --stage finetune --init_from out/bridge/ckpt.pt  # 2: the true labels
  python bridge.py --stage eval --init_from out/finetune/ckpt.pt    # a checkpoint's test accuracy
  python bridge.py config/bridge_p5.py --epochs 100                 # an experiment's file, flags
  torchrun --standalone --nproc_per_node=8 bridge.py ...            # several GPUs (DDP)

--freeze 0-5 is the paper's partial bridge: blocks 0-4 and the position table wpe keep their
language weights. What a run guarantees: README.md; every flag: below.
"""
import contextlib
import importlib.util
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import Stopped, UserError, parse, pick_device, run_cli, to_json
from data import (DATASETS, augment, eval_batches, load_dataset, random_labels, steps_per_epoch,
                  take, train_batches)
from model import GPT, OFFICIAL, GPTConfig, architecture, check_image_config, read_weights

# ----------------------------------------------------------------- flags (the paper's CIFAR-10 run)
stage = 'bridge'               # bridge: random labels | finetune: the true labels | eval: accuracy
init_from = 'gpt2-medium'      # gpt2[-medium, -large, -xl], scratch, resume, ckpt.pt, HF dir/file
model = 'gpt2-medium'          # --init_from scratch: an OpenAI size, or LAYERSxWIDTH such as 4x128
freeze = 'none'                # kept at their loaded values: 0-5 = wpe + blocks 0-4 (the paper's)
reinit_head = False            # a new classifier on a ckpt.pt (always when its classes differ)
dataset = 'cifar10'            # cifar10, cifar100, tinyimagenet, folder (DATA_DIR/train, /val)
data_dir = 'data'              # datasets live here; CIFAR is downloaded into it once
subset = 0                     # > 0: a seeded, class-balanced subset of this many training images
test_subset = 0                # > 0: the same of the test split (cheaper evaluations)
img_size = 224                 # images are resized to this square (the paper: 224, CIFAR upsampled)
patch_size = 16                # patch side in pixels: (224 / 16)^2 = 196 tokens
dropout = 0.1                  # GPT-2's dropout, active in the paper's code
aug = 'rrc'                    # rrc: RandomResizedCrop + flip (the paper) | crop: pad-4 crop | none
random_label_fraction = 1.0    # --stage bridge: share of labels drawn at random (Fig. 3: 0 to 1)
random_label_mode = 'uniform'  # uniform: any class | wrong: any but the true one (author's code)
epochs = 400                   # passes over the training set (the paper's code: 400 for the bridge)
max_iters = 0                  # > 0: this many optimizer steps instead; the schedule fits them
batch_size = 64                # images per process and micro-step (the paper's code: 64 per GPU)
grad_accum = 1                 # micro-steps per optimizer step
lr = 2.5e-4                    # peak learning rate (the paper's rule: 1e-3 x images a step / 256)
weight_decay = 0.05            # AdamW's decay on matrices and embeddings
warmup_epochs = 5.0            # linear warmup (a tenth of the run at most), then cosine to min_lr
min_lr = 1e-6                  # the learning rate at the end of the cosine
label_smoothing = 0.1          # on the training loss (the paper's code smooths in both stages)
grad_clip = 1.0                # clip the gradients' global norm to this; 0: off
seed = 0                       # random labels, data order, augmentation, dropout, new weights
device = 'auto'                # auto (cuda, else mps, else cpu), cuda, cuda:N, mps or cpu
dtype = 'auto'                 # auto: bfloat16 on CUDA, float32 elsewhere | bfloat16 | float16
compile = 'auto'               # auto: torch.compile on CUDA only | True | False
out_dir = 'out/{stage}'        # the run's folder: ckpt.pt, config.json, metrics.jsonl
auto_resume = False            # continue out_dir's run if this command made it (a requeued job)
eval_interval = 0              # steps between evaluations + checkpoints; 0: once an epoch
ckpt_minutes = 30.0            # an evaluation + checkpoint at least this often too; 0: off
log_interval = 20              # steps between progress lines (the loop's only host syncs)
num_workers = min(8, os.cpu_count())  # processes that decode image folders
wandb = False                  # also log to Weights & Biases (project $WANDB_PROJECT, else bridge)

CHOICES = dict(stage=('bridge', 'finetune', 'eval'), aug=('rrc', 'crop', 'none'),
               random_label_mode=('uniform', 'wrong'), dataset=tuple(DATASETS),
               dtype=('auto', 'bfloat16', 'float16', 'float32'), compile=('auto', 'True', 'False'))
RANGES = dict(epochs=(1, math.inf), batch_size=(1, math.inf), grad_accum=(1, math.inf),
              log_interval=(1, math.inf), img_size=(1, math.inf), patch_size=(1, math.inf),
              random_label_fraction=(0, 1), dropout=(0, 1), label_smoothing=(0, 1),
              seed=(0, 2 ** 32 - 1))  # the data order's seed, 1_000_003 * seed + epoch: 64 bits
# what a resume may change; any other flag keeps the run's value, or its checkpoint would lie
RESUMABLE = ('init_from', 'out_dir', 'data_dir', 'epochs', 'max_iters', 'eval_interval',
             'ckpt_minutes', 'log_interval', 'device', 'dtype', 'compile', 'num_workers', 'wandb',
             'auto_resume')
RUN_FILES = ('ckpt.pt', 'metrics.jsonl', 'config.json')  # a run's, never replaced by another
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # Ctrl-C, a scheduler's, slurm.sh's
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}  # dense bf16, for MFU


def main(argv):
    c, given = parse(argv, globals(), CHOICES, RANGES)
    c.out_dir = c.out_dir.replace('{stage}', c.stage)
    stop = catch_signals()  # a signal stops at once until training starts, then after a step
    try:
        env = setup(c)
        c, ckpt, resuming = open_run(c, given, env)
        d = get_data(c, env, ckpt, resuming)
        net, start = start_model(c, d['classes'], ckpt, resuming)
        net.to(env.device)
        if c.stage == 'eval':  # one line of JSON; a diverged checkpoint's null loss exits 1
            result = dict(init_from=c.init_from, dataset=c.dataset, data_dir=c.data_dir,
                          **evaluate(net, d, c, env))
            print(to_json(result))
            if not math.isfinite(result['test_loss']):
                raise UserError(f"{c.init_from}: test loss {result['test_loss']}: it diverged")
            return result
        # the method: stage 1 trains on random labels, stage 2 on the true ones; frozen blocks
        # keep their language weights (partial bridge training); AdamW trains the rest
        labels = ckpt['train_labels'] if resuming else train_labels(c, d)
        net.freeze(c.freeze)
        if not any(p.requires_grad for p in net.parameters()):
            raise UserError(f"--freeze {c.freeze} leaves nothing to train")
        run = dict(run=ckpt['run'] if resuming else os.urandom(6).hex(), start=start)
        return train(c, env, d, net, labels, ckpt if resuming else None, run, stop)
    finally:
        for s, handler in stop.previous.items():
            signal.signal(s, handler)
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------- the method
def train_labels(c, d):
    """Stage 1 trains on random labels (no annotation needed), stage 2 on the true ones."""
    true = d['train'][1].cpu()
    if c.stage == 'finetune':
        print(f"finetune: the {len(true)} true training labels")
        return true
    if c.random_label_mode == 'wrong' and len(d['classes']) < 2:
        raise UserError(f"--random_label_mode wrong draws any class but the true one: {c.dataset} "
                        f"at {c.data_dir} has a single class")
    labels = random_labels(true, len(d['classes']), c.random_label_fraction, c.seed,
                           wrong=c.random_label_mode == 'wrong')
    print(f"bridge: {c.random_label_fraction:.0%} of the {len(true)} training labels drawn at "
          f"random ({c.random_label_mode}, seed {c.seed}); {(labels != true).float().mean():.1%} "
          f"now differ from the truth; test labels are the true ones")
    return labels


def start_model(c, classes, ckpt=None, resuming=False):
    """-> (the network a run starts from, a record of that start). What the source lacks (OpenAI's
    GPT-2 has no image parts; a new head) is drawn from --seed: the same flags, the same weights."""
    torch.manual_seed(c.seed)
    image = dict(vocab_size=0, n_classes=len(classes), img_size=c.img_size,
                 patch_size=c.patch_size, dropout=c.dropout)
    if ckpt is None and c.init_from == 'scratch':
        print(f"scratch: GPT-2 {c.model}, GPT-2's random init")
        return GPT(GPTConfig(**architecture(c.model), **image)), {}
    if ckpt is None:
        if c.stage == 'finetune':
            print(f"finetune: from {c.init_from}'s language weights, without a bridge stage (to "
                  f"fine-tune a bridged network, give --init_from out/bridge/ckpt.pt)")
        return GPT.from_pretrained(c.init_from, **image), {}
    # a checkpoint: resumed, evaluated, or handed on (its head kept for the classes it learned)
    handing = not resuming and c.stage != 'eval'
    new_head = handing and (c.reinit_head or ckpt['data']['classes'] != classes)
    net = GPT(GPTConfig(**{**ckpt['model_config'], **(image if handing else {})}))
    net.load_state_dict({k: v for k, v in ckpt['model'].items()
                         if not (new_head and k.startswith('head.'))}, strict=not new_head)
    if not resuming:
        print(f"loaded {c.init_from}: step {ckpt['iter']} of a {ckpt['config']['stage']} run; "
              f"{net.config.img_size}px images in {net.config.patch_size}px patches"
              + f"; a new head for {len(classes)} classes" * new_head)
    return net, dict(run=ckpt['run'], iter=ckpt['iter']) if handing else ckpt['start']


def schedule(c, per_epoch):
    """-> (total steps, warmup steps). The warmup takes a tenth of the run at most, so that a short
    run (--max_iters, few epochs) still reaches its peak learning rate and decays."""
    total = c.max_iters or max(1, round(c.epochs * per_epoch))
    warmup = c.warmup_epochs * per_epoch  # a float until it is capped: 1e308 epochs round to inf
    if warmup > total // 10:
        print(f"warmup: {c.warmup_epochs:g} epochs = {warmup:.0f} steps, more than a tenth of "
              f"this {total}-step run: {total // 10} steps instead")
        warmup = total // 10
    return total, round(warmup)


def lr_at(it, c, warmup, total):
    """Linear warmup to c.lr, then half-cosine to c.min_lr at total (the paper's code, per step)."""
    if it < warmup:
        return c.lr * (it + 1) / warmup
    progress = (it - warmup) / max(1, total - warmup)
    return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------- the training loop
def train(c, env, d, raw, labels, resumed, run, stop):
    """Warmup + cosine, gradient accumulation, clipping; evaluations and checkpoints as due."""
    per_epoch = steps_per_epoch(len(labels), c.batch_size, env.world) / c.grad_accum
    total, warmup = schedule(c, per_epoch)
    opt = raw.configure_optimizers(c.weight_decay, c.lr, (0.9, 0.999))
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.dtype == torch.float16)
    r = begin(c, env, raw, resumed, opt, scaler, total, per_epoch, warmup)
    if r.it >= total:  # the same command again, once the run has finished
        print(f"{c.out_dir} holds this run, finished at step {r.it}: nothing to train")
        return r.history[-1]
    net = wrap(c, env, raw)
    batches = train_batches(d['train'][0], labels.to(env.device), c.batch_size, r.it * c.grad_accum,
                            c.seed, env.rank, env.world, c.num_workers)
    stop.training = True  # from here a signal is noted, and the run stops after its step
    while r.it < total:
        lr = lr_at(r.it, c, warmup, total)
        for group in opt.param_groups:
            group['lr'] = lr
        torch.manual_seed(hash((c.seed, env.rank, r.it)))  # augmentation, dropout: by step
        for micro in range(c.grad_accum):
            x, y = next(batches)
            if env.world > 1:  # all-reduce the gradients on the last micro-step only
                net.require_backward_grad_sync = micro == c.grad_accum - 1
            with env.ctx:
                logits = net(augment(x, c.aug, c.img_size, d['mean'], d['std'])).float()
                loss = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
            scaler.scale(loss / c.grad_accum).backward()
            count(r, loss, logits, y)
        if c.grad_clip:  # the gradients' global norm, unscaled first under float16
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(raw.parameters(), c.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        r.it += 1
        stopping, timed = agree(r, stop)
        if r.it % c.log_interval == 0 or r.it == total:
            progress(r, lr)
        if r.it % r.eval_every == 0 or r.it == total or stopping or timed:
            save(r, lr, evaluate(net, d, c, env), dict(
                model=raw, optimizer=opt, scaler=scaler, train_labels=labels, data=d['fingerprint'],
                **run))
        if stopping:
            break
    return finish(r, stop)


@torch.no_grad()
def evaluate(net, d, c, env):
    """Loss (no smoothing) and accuracy on the whole test split with its true labels, all ranks."""
    net.eval()
    t = torch.zeros(3, device=env.device)  # loss sum, correct, images
    for x, y in eval_batches(*d['test'], c.batch_size, env.rank, env.world, c.num_workers):
        with env.ctx:
            logits = net(augment(x, 'eval', c.img_size, d['mean'], d['std'])).float()
        t[0] += F.cross_entropy(logits, y, ignore_index=-1, reduction='sum')  # -1: the padding
        t[1] += (logits.argmax(1) == y).sum()
        t[2] += (y >= 0).sum()
    net.train()
    loss, acc, n = summed(t, env)
    return dict(test_loss=loss, test_acc=acc, test_images=int(n))


# ----------------------------------------------------------------- the run: its start
def setup(c):
    """-> env: rank, world, device, autocast dtype and context. torchrun sets WORLD_SIZE, RANK and
    LOCAL_RANK: a GPU a rank (NCCL), or CPU processes (gloo); rank 0 alone prints."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    rank, local = (int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])) if world > 1 else (0, 0)
    device = pick_device(c.device)
    if device.type == 'cuda':
        device = torch.device('cuda', local) if world > 1 else device
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if rank > 0:
        sys.stdout = open(os.devnull, 'w')
    dtype = autocast_dtype(c.dtype, device)
    name = str(dtype).removeprefix('torch.')
    print(f"device {device}, {name}, {world} process{'es' * (world > 1)}")
    ctx = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    return SimpleNamespace(rank=rank, world=world, device=device, dtype=dtype, ctx=ctx)


def autocast_dtype(name, device, on_cuda='bfloat16'):
    """--dtype -> a torch dtype: 'auto' is on_cuda on CUDA, float32 elsewhere (the same numbers on
    every CPU); bfloat16 becomes float16 on GPUs before Ampere."""
    if name == 'auto':
        name = on_cuda if device.type == 'cuda' else 'float32'
    if name == 'bfloat16' and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        name = 'float16'
    return getattr(torch, name)


def peak_flops(device):
    """The dense bf16 peak FLOP/s of the GPU behind device (H100, H200, A100), for MFU; or None."""
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else ''
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def open_run(c, given, env):
    """-> (config, the checkpoint it starts from or None, resuming?), before any data is read. A
    fresh run goes into a folder that holds no run: it never replaces one."""
    path = os.path.join(c.out_dir, 'ckpt.pt')
    ckpt = load_checkpoint(c.init_from) if c.init_from.endswith(('.pt', '.pth')) else None
    if ckpt:  # what the command means: its start's sizes and data, before any comparison
        handed_on(c, given, ckpt)
    if c.stage != 'eval' and (c.init_from == 'resume' or c.auto_resume and os.path.isfile(path)):
        run = load_checkpoint(path)
        return resumed(c, given, run, env, ckpt), run, True
    if ckpt is None and c.stage == 'eval':
        raise UserError(f"--stage eval needs --init_from a ckpt.pt of bridge.py, not {c.init_from}")
    if not ckpt and c.init_from not in (*OFFICIAL, 'scratch') and not os.path.exists(c.init_from):
        raise UserError(f"--init_from {c.init_from}: no such file or directory; use "
                        f"{', '.join(OFFICIAL)}, scratch, resume, a ckpt.pt of bridge.py, or a "
                        f"Hugging Face checkpoint (a directory, .safetensors or .bin)")
    check_flags(c, given, ckpt)
    if c.stage == 'eval':
        return c, ckpt, False
    found = [n for n in RUN_FILES if os.path.lexists(os.path.join(c.out_dir, n))]
    if found:  # a dangling link counts: a disk that is not mounted
        raise UserError(f"{c.out_dir} holds a run ({', '.join(found)}): continue it with "
                        f"--init_from resume, or its command with --auto_resume True; or start "
                        f"elsewhere with another --out_dir")
    if c.auto_resume:
        print(f"--auto_resume: {c.out_dir} holds no checkpoint: starting the run")
    try:
        os.makedirs(c.out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out_dir {c.out_dir!r}: {e.strerror}") from None
    return c, ckpt, False


def check_flags(c, given, ckpt):
    """What the flags must agree on, checked before any data or weights are read."""
    if 'model' in given and c.init_from != 'scratch':
        raise UserError("--model shapes a scratch model: use it with --init_from scratch")
    for k in ('random_label_fraction', 'random_label_mode'):
        if k in given and c.stage != 'bridge':
            raise UserError(f"--{k} is for --stage bridge: {c.stage} has true labels")
    if c.min_lr > c.lr:
        raise UserError(f"--min_lr {c.min_lr} is above --lr {c.lr}: the cosine decays to min_lr")
    if c.wandb and importlib.util.find_spec('wandb') is None:
        raise UserError("--wandb True needs the wandb package: pip install wandb")
    check_image_config(GPTConfig(img_size=c.img_size, patch_size=c.patch_size))  # before a download


def load_checkpoint(path):
    """A ckpt.pt of bridge.py -> dict; its network is GPT(GPTConfig(**ckpt['model_config']))."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path} (the run's --out_dir?)")
    ckpt = read_weights(path)
    if not (isinstance(ckpt, dict) and {'model', 'model_config', 'config', 'run'} <= ckpt.keys()):
        raise UserError(f"{path} is not a checkpoint of this bridge.py")
    unknown = set(ckpt['model_config']) - set(GPTConfig.__dataclass_fields__)
    if unknown:  # never dropped: a field changes the network
        raise UserError(f"{path}: its model_config has fields GPTConfig does not know "
                        f"({', '.join(sorted(unknown))}): written by another version of model.py?")
    return ckpt


def resumed(c, given, ckpt, env, source=None):
    """The config of a resume. --init_from resume: the run's; a flag given must repeat the run's
    value unless RESUMABLE. --auto_resume: each flag of this command, given or not, must equal the
    run's but RESUMABLE ones. A flag added to bridge.py since the run began takes its default."""
    explicit = c.init_from == 'resume'
    new = sorted(set(vars(c)) - set(ckpt['config']))
    run = {**{k: globals()[k] for k in new}, **ckpt['config']}
    if new:
        print(f"{c.out_dir}/ckpt.pt predates {', '.join(f'--{k} {run[k]!r}' for k in new)}: the "
              f"run resumes with {'these defaults' if len(new) > 1 else 'its default'}")
    may_change = RESUMABLE if explicit else RESUMABLE[1:]  # --auto_resume: its init_from too
    asked = (given if explicit else set(vars(c))) - set(may_change)
    differ = '; '.join(f"--{k} {getattr(c, k)!r} is not the run's {run[k]!r}"
                       for k in sorted(asked) if getattr(c, k) != run[k])
    if differ and explicit:
        raise UserError(f"--init_from resume continues {c.out_dir} as it was: {differ} (a resume "
                        f"may change only --{', --'.join(RESUMABLE[1:])})")
    if differ:
        raise UserError(f"--auto_resume: {c.out_dir} holds another command's run: {differ} (a "
                        f"flag left out counts as its default); start elsewhere (--out_dir)")
    if not explicit and ckpt['iter'] >= ckpt['total'] and not run['auto_resume']:
        raise UserError(f"{c.out_dir} holds a finished run made without --auto_resume, which "
                        f"--auto_resume does not take over: continue it with --init_from resume")
    if ckpt['world'] != env.world:
        raise UserError(f"{c.out_dir} ran as {ckpt['world']} processes: resume it with as many")
    same_start(run, ckpt['start'], c.out_dir, source)
    print(f"{'--auto_resume: ' * (not explicit)}{c.out_dir} holds this run at step {ckpt['iter']}:"
          f" continuing it")
    mine = {k: getattr(c, k) for k in given - {'init_from'}} if explicit else vars(c)
    return SimpleNamespace(**{**run, **mine, 'out_dir': c.out_dir})


def same_start(run, start, where, now=None):
    """A run handed on from a checkpoint goes on only while that is the checkpoint it started
    from: the same run, at the same step. -> that checkpoint (now: it, already read), or None."""
    source = run['init_from']
    if not (source.endswith(('.pt', '.pth')) and os.path.isfile(source)):
        return None
    now = now or load_checkpoint(source)
    if (now['run'], now['iter']) != (start['run'], start['iter']):
        run_now = 'the same run' if now['run'] == start['run'] else 'another run'
        raise UserError(f"{where} started from {source} at step {start['iter']}, which now holds "
                        f"step {now['iter']} of {run_now}: the start has changed since (hand the "
                        f"new one on into another --out_dir)")
    return now


def handed_on(c, given, ckpt):
    """Stage 1 -> 2 (or eval): the network's image and patch size, its run's data unless given."""
    for k in ('img_size', 'patch_size'):
        have = ckpt['model_config'][k]
        if k in given and getattr(c, k) != have:
            raise UserError(f"--{k} {getattr(c, k)}: {c.init_from} was trained with {k} {have}, "
                            f"part of its network; leave the flag out")
        setattr(c, k, have)
    kept = [k for k in ('dataset', 'data_dir') if k not in given]
    for k in kept:
        setattr(c, k, ckpt['config'][k])
    if kept:
        print(f"{c.init_from}: its run's {' and '.join(f'--{k} {getattr(c, k)}' for k in kept)} "
              f"(give the flag for other data)")
    froze = ckpt['config']['freeze']
    if c.stage != 'eval' and froze != 'none':
        now = 'kept frozen' if c.freeze == froze else f"--freeze {c.freeze} now"
        print(f"{c.init_from}: its {ckpt['config']['stage']} stage froze {froze}; {now}")


def get_data(c, env, ckpt, resuming):
    """The dataset on the device (rank 0 downloads first), its --subset and --test_subset."""
    first = env.world > 1 and c.dataset != 'folder'
    if first and env.rank > 0:
        dist.barrier()
    d = load_dataset(c.dataset, c.data_dir, c.img_size, env.device, c.num_workers)
    if first and env.rank == 0:
        dist.barrier()
    for split, n in (('train', c.subset), ('test', c.test_subset)):
        if n:  # the fingerprint stays the whole dataset's; the flags and --seed pick the part
            d = take(d, split, n, c.seed, f"--{'test_' * (split == 'test')}subset")
    if resuming and d['fingerprint'] != ckpt['data']:
        differ = [k for k, v in ckpt['data'].items() if d['fingerprint'][k] != v]
        raise UserError(f"{c.dataset} at {c.data_dir} is not the data {c.out_dir} trained on: its "
                        f"{', '.join(differ)} differ")
    if c.stage == 'eval' and d['classes'] != ckpt['data']['classes']:
        raise UserError(f"{c.init_from} classifies {len(ckpt['data']['classes'])} classes "
                        f"({', '.join(ckpt['data']['classes'][:4])}...), {c.dataset} at "
                        f"{c.data_dir} has {len(d['classes'])} ({', '.join(d['classes'][:4])}...)")
    return d


def wrap(c, env, raw):
    """Compiled (by default on CUDA only: on a CPU compiled steps ran slower), in DDP under
    torchrun. Every batch has one shape: one graph to train, one to evaluate."""
    compiled = c.compile == 'True' or (c.compile == 'auto' and env.device.type == 'cuda')
    print(f"--compile {c.compile}: " + ("torch.compile; the first step and the first evaluation "
                                        "take longer" if compiled else "eager"))
    net = torch.compile(raw) if compiled else raw
    if env.world > 1:
        net = DDP(net, device_ids=[env.device.index] if env.device.type == 'cuda' else None)
    return net


# ----------------------------------------------------------------- the run: steps, stops, saves
def catch_signals():
    """SIGINT, SIGTERM, SIGUSR1: before training they stop at once (nothing is written yet), then
    after the current step with a checkpoint. A repeat changes nothing (Slurm + torchrun: two)."""
    stop = SimpleNamespace(signum=0, training=False,
                           previous={s: signal.getsignal(s) for s in SIGNALS})

    def on_signal(signum, frame):
        if not stop.training:
            raise Stopped(signum)
        if not stop.signum and os.environ.get('RANK', '0') == '0':  # os.write: safe in a handler
            os.write(2, f"{signal.Signals(signum).name}: the run stops with a checkpoint when "
                        f"this step ends\n".encode())
        stop.signum = stop.signum or signum
    for s in SIGNALS:
        signal.signal(s, on_signal)
    return stop


def begin(c, env, raw, resumed, opt, scaler, total, per_epoch, warmup):
    """The run's state (a resumed run's step, metrics, optimizer); says what the run will cost."""
    r = SimpleNamespace(c=c, env=env, total=total, per_epoch=per_epoch, it=0, history=[],
                        elapsed=0.0, vote=None, flops=raw.flops_per_image(),
                        peak=peak_flops(env.device))
    if resumed:
        opt.load_state_dict(resumed['optimizer'])
        if resumed['scaler']:  # empty unless the run trained in float16
            scaler.load_state_dict(resumed['scaler'])
        r.it, r.history, r.elapsed = resumed['iter'], resumed['history'], resumed['elapsed_s']
        if lr_at(r.it - 1, c, warmup, total) != r.history[-1]['lr']:  # --max_iters, --epochs
            print(f"the schedule now ends at step {total}: the learning rate goes from the run's "
                  f"{r.history[-1]['lr']:.2e} (step {r.it}) to {lr_at(r.it, c, warmup, total):.2e}")
    r.eval_every = c.eval_interval or max(1, round(per_epoch))
    r.since_log, r.since_eval = torch.zeros(3, device=env.device), torch.zeros(3, device=env.device)
    r.images = c.batch_size * c.grad_accum * env.world
    flops = total * r.images * r.flops
    moments = 8 * sum(p.numel() for p in raw.parameters() if p.requires_grad)  # AdamW's two
    mb = (sum(v.numel() * v.element_size() for v in raw.state_dict().values()) + moments) / 1e6
    hours = f"; {flops / (0.4 * r.peak * env.world) / 3600:.1f} h at 40% MFU" if r.peak else ''
    print(f"{total} steps ({per_epoch:.1f} an epoch), lr {c.lr:.2e}, warmup {warmup}, cosine to "
          f"{c.min_lr:g}; eval every {r.eval_every} steps into {c.out_dir}")
    print(f"cost: {total:,} steps x {r.images} images = {total * r.images:,} images, {flops:.3g} "
          f"FLOPs to train ({r.flops:.3g} an image); each checkpoint {mb:,.1f} MB (weights and "
          f"AdamW's moments){hours}")
    r.last = r.saved = time.time()
    r.start = r.last - r.elapsed
    return r


def count(r, loss, logits, y):
    """A micro-batch's loss, correct predictions and size into the tallies: no host sync."""
    for t in (r.since_log, r.since_eval):
        t[0] += loss.detach() * len(y)
        t[1] += (logits.detach().argmax(1) == y).sum()
        t[2] += len(y)  # a Python number as a kernel argument: no copy to the device


def summed(t, env):
    """A tally summed over ranks, then reset -> (mean loss, accuracy, images)."""
    if env.world > 1:
        dist.all_reduce(t)
    loss, correct, n = t.tolist()
    t.zero_()
    return loss / n, correct / n, n


def agree(r, stop):
    """-> (stop after this step?, a timed checkpoint now?). Under DDP the ranks' flags are summed
    by an all-reduce a step, read a step later, so no step waits: they stop together."""
    timed = bool(r.c.ckpt_minutes) and time.time() - r.saved > 60 * r.c.ckpt_minutes
    if r.env.world == 1:
        return bool(stop.signum), timed
    seen, r.vote = r.vote, torch.zeros(2, device=r.env.device)
    r.vote[0], r.vote[1] = float(bool(stop.signum)), float(timed)  # fills: no copy, no sync
    dist.all_reduce(r.vote)  # on NCCL's stream: the host does not wait for it
    return (False, False) if seen is None else tuple(v > 0 for v in seen.tolist())


def progress(r, lr):
    """A progress line (a host sync). A loss that is not finite stops the run; ckpt.pt stays."""
    loss, acc, n = summed(r.since_log, r.env)
    if not math.isfinite(loss):
        diverged(r, f"loss {loss}")
    now = time.time()
    img_s, r.last = n / max(now - r.last, 1e-9), now
    mfu = f" | mfu {img_s / r.env.world * r.flops / r.peak:.1%}" if r.peak else ''
    eta = timedelta(seconds=round((r.total - r.it) * r.images / img_s))
    print(f"step {r.it}/{r.total} (epoch {r.it / r.per_epoch:.2f}) | loss {loss:.4f} | acc "
          f"{acc:.1%} | lr {lr:.2e} | {img_s:.1f} img/s{mfu} | eta {eta}")


def save(r, lr, test, state):
    """An evaluation's metrics, then rank 0's checkpoint; a loss not finite stops the run."""
    c, env = r.c, r.env
    train_loss, train_acc, _ = summed(r.since_eval, env)
    m = dict(iter=r.it, epoch=round(r.it / r.per_epoch, 4), lr=lr, train_loss=train_loss,
             train_acc=train_acc, **test, elapsed_s=round(time.time() - r.start, 2))
    for k in ('train_loss', 'test_loss'):
        if not math.isfinite(m[k]):
            diverged(r, f"{k.replace('_', ' ')} {m[k]}")
    r.history.append(m)
    if env.rank == 0:
        raw = state['model']
        write_run(c.out_dir, last_kept(r.history[:-1]), dict(
            state, model=raw.state_dict(), model_config=asdict(raw.config), config=vars(c),
            optimizer=state['optimizer'].state_dict(), scaler=state['scaler'].state_dict(),
            train_labels=state['train_labels'].cpu(), iter=r.it, total=r.total,
            history=r.history, elapsed_s=m['elapsed_s'], world=env.world))
    r.saved = time.time()
    print(f"eval step {r.it}: train loss {train_loss:.4f} acc {train_acc:.1%} (since the last "
          f"evaluation, on the labels trained on) | test loss {m['test_loss']:.4f} acc "
          f"{m['test_acc']:.2%} | saved {c.out_dir}/ckpt.pt")
    if c.wandb and env.rank == 0:
        import wandb
        if wandb.run is None:
            wandb.init(project=os.environ.get('WANDB_PROJECT', 'bridge'), config=vars(c))
        wandb.log(m, step=r.it)


def write_run(out_dir, kept, ckpt):
    """ckpt.pt, then metrics.jsonl and config.json from it: each to a temporary file, fsynced,
    renamed over the old one. A kill leaves the last whole checkpoint; a failed write, one line."""
    rows = ''.join(to_json(m) + '\n' for m in ckpt['history']).encode()
    config = to_json({**ckpt['config'], 'model_config': ckpt['model_config'], 'data': ckpt['data']},
                     indent=1).encode()
    for name, write in (('ckpt.pt', lambda f: torch.save(ckpt, f)),
                        ('metrics.jsonl', lambda f: f.write(rows)),
                        ('config.json', lambda f: f.write(config))):
        path = os.path.join(out_dir, name)
        try:
            with open(path + '.tmp', 'wb') as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + '.tmp', path)
        except (OSError, RuntimeError) as e:  # torch.save wraps a failed write in a RuntimeError
            cause = e if isinstance(e, OSError) else e.__context__
            why = getattr(cause, 'strerror', None) or str(e).splitlines()[0]
            with contextlib.suppress(OSError):
                os.remove(path + '.tmp')
            raise UserError(f"cannot write {path} at step {ckpt['iter']} ({why}): stopped; "
                            f"{kept}") from None
        kept = f"ckpt.pt keeps step {ckpt['iter']}"


def last_kept(history):
    return f"ckpt.pt keeps step {history[-1]['iter']}" if history else "no checkpoint was written"


def diverged(r, what):
    hint = " or --dtype bfloat16" if r.c.dtype == 'float16' else ''
    raise UserError(f"{what} at step {r.it}: stopped; in {r.c.out_dir}, {last_kept(r.history)}; "
                    f"try a lower --lr{hint}")


def finish(r, stop):
    """The closing line; a run stopped by a signal raises Stopped (exit 128 + the signal)."""
    last, best = r.history[-1], max(r.history, key=lambda m: m['test_acc'])
    print(f"done: {r.c.stage} {'finished' if r.it == r.total else 'stopped'} at step {r.it} after "
          f"{timedelta(seconds=round(time.time() - r.start))}; test accuracy "
          f"{last['test_acc']:.2%} (best {best['test_acc']:.2%}, step {best['iter']}); checkpoint "
          f"{r.c.out_dir}/ckpt.pt")
    if stop.signum:
        how = '' if r.c.auto_resume else ' and --init_from resume'
        print(f"stopped by {signal.Signals(stop.signum).name} at step {r.it}, with a checkpoint; "
              f"continue with the same command{how}")
        raise Stopped(stop.signum, last)
    return last


if __name__ == '__main__':
    run_cli(main)
