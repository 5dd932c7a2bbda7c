"""
Random-label bridge training, then fine-tuning: the two stages of Luo & Shen (TMLR 2026).

  python bridge.py --stage bridge --freeze 0-5                        # 1: random labels
  python bridge.py --stage finetune --init_from out/bridge/ckpt.pt    # 2: the true labels
  python bridge.py --stage eval --init_from out/finetune/ckpt.pt      # a checkpoint's accuracy
  torchrun --standalone --nproc_per_node=8 bridge.py ...              # several GPUs (DDP)

A run lives in its --out_dir, which it holds (locks) while it runs; checkpoint.py keeps the rules
of that folder (what a resume may change, the fingerprints, the checksums, the atomic writes).
Ctrl-C (or SIGTERM) stops when the current step ends, with a checkpoint, and exits 130 (143); the
same command with --init_from resume continues it bit for bit.
"""
import contextlib
import importlib.util
import math
import os
import signal
import sys
import time
from datetime import timedelta
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
from configurator import (Stopped, UserError, autocast_dtype, cores, parse, peak_flops,
                          pick_device, ranks, run_cli, set_threads, to_json)
from data import (CIFAR, augment, eval_batches, fetch_cifar, fetch_tiny_imagenet,
                  load_dataset, random_labels, steps_per_epoch, train_batches)
from model import OFFICIAL, GPTConfig, architecture, check_image_config, download, freeze_spec

# ----------------------------------------------------------------- flags (the paper's CIFAR-10 run)
stage = 'bridge'               # bridge: random labels | finetune: the true labels | eval: accuracy
init_from = 'gpt2-medium'      # gpt2[-medium|-large|-xl] | scratch | resume | ckpt.pt | HF dir/file
model = 'gpt2-medium'          # --init_from scratch: an OpenAI size, or LAYERSxWIDTH such as 4x128
freeze = 'none'                # kept at their loaded values: 0-5 = the first five blocks
reinit_head = False            # a new classifier on a ckpt.pt (always when its classes differ)
dataset = 'cifar10'            # cifar10 | cifar100 | tinyimagenet | folder (DATA_DIR/train, val)
data_dir = 'data'              # datasets live here; CIFAR is downloaded into it once
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
device = 'auto'                # auto (cuda, else mps, else cpu) | cuda | cuda:N | mps | cpu
dtype = 'auto'                 # auto: bfloat16 on CUDA (float16 before Ampere), float32 elsewhere
compile = 'auto'               # torch.compile the model: auto (on CUDA only) | True | False
out_dir = 'out/{stage}'        # the run's folder: ckpt.pt, config.json, metrics.jsonl
eval_interval = 0              # steps between evaluations + checkpoints; 0: once an epoch
log_interval = 20              # steps between progress lines (the loop's only host syncs)
num_workers = cores()          # processes decoding image folders: this process's share of cores
wandb = False                  # also log to Weights & Biases (project $WANDB_PROJECT, else bridge)

CHOICES = dict(stage=('bridge', 'finetune', 'eval'),
               dataset=('cifar10', 'cifar100', 'tinyimagenet', 'folder'),
               aug=('rrc', 'crop', 'none'), random_label_mode=('uniform', 'wrong'),
               dtype=('auto', 'bfloat16', 'float16', 'float32'), compile=('auto', 'True', 'False'))
COMPILING = []  # the start times of the torch.compile calls under way
POSITIVE = ('epochs', 'batch_size', 'grad_accum', 'log_interval', 'img_size', 'patch_size')


def main(argv):
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = catch_signals()  # first: a signal during start-up stops at once, before any write
    try:
        c, ckpt, resuming = configure(argv)  # everything that can be checked without work, first
        env = setup(c, ckpt if resuming else None)
        with contextlib.redirect_stdout(sys.stdout if env.rank == 0 else open(os.devnull, 'w')):
            return run(c, ckpt, resuming, env, stop)
    except torch.OutOfMemoryError:  # CUDA's (or MPS's), in a training step or an evaluation
        raise UserError(out_of_memory(c, env)) from None
    finally:  # the run folder's lock goes; in-process callers get their signal handlers back
        checkpoint.release()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if dist.is_initialized():
            dist.destroy_process_group()


def run(c, ckpt, resuming, env, stop):
    dtype = str(env.dtype).removeprefix('torch.')
    print(f"device {env.device}, {dtype}, {env.world} process{'es' * (env.world > 1)}, "
          f"{env.threads} CPU thread{'s' * (env.threads > 1)} each (OMP_NUM_THREADS sets them)")
    if resuming:
        checkpoint.threads_of_run(ckpt.get('threads'), env.threads)
    d = load_data(c, ckpt, resuming, env)
    net, start = checkpoint.start_model(c, ckpt, resuming, d['classes'])
    net.to(env.device)
    if c.stage == 'eval':  # one line of JSON; a test loss that is not finite exits 1
        result = dict(init_from=c.init_from, dataset=c.dataset, data_dir=c.data_dir,
                      **evaluate(net, d, c, env))
        print(to_json(result))
        if not math.isfinite(result['test_loss']):
            raise UserError(f"{c.init_from}: test loss {result['test_loss']}: its weights diverged")
        return result
    # the method: stage 1 trains on random labels, stage 2 on the true ones; frozen blocks keep
    # their language weights (partial bridge training); AdamW trains the rest
    own = ckpt if resuming else None  # the run's own checkpoint: its labels, optimizer, step
    labels = train_labels(c, d, own)
    net.freeze(c.freeze)
    if not any(p.requires_grad for p in net.parameters()):
        raise UserError(f"--freeze {c.freeze} leaves nothing to train")
    opt = net.configure_optimizers(c.weight_decay, c.lr, (0.9, 0.999), env.device.type)
    return train(c, env, d, net, opt, labels, own, start, stop)


def out_of_memory(c, env):
    """The line for an out-of-memory error: the batch, the device's memory, what to change."""
    if env.device.type == 'cuda':
        memory = torch.cuda.get_device_properties(env.device).total_memory
    else:
        memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return (f"out of memory on {env.device} ({memory / 2 ** 30:.0f} GiB) at --batch_size "
            f"{c.batch_size}: a smaller --batch_size with a larger --grad_accum keeps the images "
            f"per step, and so the learning rate: --batch_size {max(1, c.batch_size // 2)} "
            f"--grad_accum {2 * c.grad_accum}")


# ----------------------------------------------------------------- the method
def train_labels(c, d, ckpt):
    """The bridge stage trains on random labels (no annotation needed), finetune on the true ones; a
    resumed run keeps the labels it started with."""
    true = d['train'][1].cpu()
    if ckpt is not None:
        return ckpt['train_labels']
    if c.random_label_mode == 'wrong' and len(d['classes']) < 2:
        raise UserError(f"--random_label_mode wrong draws any class but the true one: {c.dataset} "
                        f"at {c.data_dir} has a single class")
    if c.stage == 'finetune':
        print(f"finetune: the {len(true)} true training labels")
        return true
    labels = random_labels(true, len(d['classes']), c.random_label_fraction, c.seed,
                           wrong=c.random_label_mode == 'wrong')
    differ = (labels != true).float().mean()
    print(f"bridge: {c.random_label_fraction:.0%} of the {len(true)} training labels drawn at "
          f"random ({c.random_label_mode}, seed {c.seed}); {differ:.1%} now differ from the truth; "
          f"test labels are the true ones")
    return labels


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
def train(c, env, d, raw, opt, labels, ckpt, start, stop):
    """Warmup + cosine, gradient accumulation, clipping; a progress line every log_interval steps,
    an evaluation and a checkpoint every eval_interval. A signal stops it after the current step
    (under DDP at the next progress line, where the ranks agree), with a checkpoint."""
    per_epoch = steps_per_epoch(len(labels), c.batch_size, env.world) / c.grad_accum
    total, warmup = schedule(c, per_epoch)
    eval_every = c.eval_interval or max(1, round(per_epoch))
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.dtype == torch.float16)
    it, history = checkpoint.resume_state(c, opt, scaler, ckpt)
    if history and lr_at(it - 1, c, warmup, total) != history[-1]['lr']:  # --max_iters, --epochs
        print(f"the schedule now ends at step {total}: the learning rate goes from the run's "
              f"{history[-1]['lr']:.2e} (step {it}) to {lr_at(it, c, warmup, total):.2e}")
    net = wrap(raw, c, env)
    batches = train_batches(d['train'][0], labels.to(env.device), c.batch_size, it * c.grad_accum,
                            c.seed, env.rank, env.world, c.num_workers)
    # running [loss sum, correct, images] on the device: one tensor each, one all-reduce each
    since_log, since_eval = torch.zeros(3, device=env.device), torch.zeros(3, device=env.device)
    print(f"{total} steps ({per_epoch:.1f} an epoch) of {c.batch_size * c.grad_accum * env.world} "
          f"images: lr {c.lr:.2e}, warmup {warmup} steps, cosine to {c.min_lr:g}; "
          f"eval every {eval_every} steps into {c.out_dir}")
    clock = Clock(ckpt['elapsed_s'] if ckpt else 0.0, raw.flops_per_image(), env)
    stop.training = True  # a signal is noted from here on, and honoured between two steps
    while it < total:
        stop.left = c.grad_accum  # the micro-steps a signal waits for
        lr = lr_at(it, c, warmup, total)
        for group in opt.param_groups:
            group['lr'] = lr
        torch.manual_seed(hash((c.seed, env.rank, it)))  # augmentation, dropout: (seed, rank, step)
        for micro in range(c.grad_accum):
            stop.left = c.grad_accum - micro
            x, y = next(batches)
            if env.world > 1:  # all-reduce the gradients on the last micro-step only
                net.require_backward_grad_sync = micro == c.grad_accum - 1
            with env.ctx:
                logits = net(augment(x, c.aug, c.img_size, d['mean'], d['std'])).float()
                loss = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
            scaler.scale(loss / c.grad_accum).backward()
            count((since_log, since_eval), loss, logits, y)
        optimizer_step(c, raw, opt, scaler)
        it += 1
        noted = bool(stop.signum) and env.world == 1  # no host sync: a Python flag
        if not noted and it % c.log_interval and it % eval_every and it < total:
            continue
        stopping = agree(bool(stop.signum), env)  # every rank stops at the same step
        progress(c, env, it, total, per_epoch, lr, since_log, clock, history)
        if it % eval_every == 0 or it == total or stopping:
            train_loss, train_acc, _ = summed(since_eval, env)
            metrics = dict(iter=it, epoch=round(it / per_epoch, 4), lr=lr, train_loss=train_loss,
                           train_acc=train_acc, **evaluate(net, d, c, env))
            metrics['elapsed_s'] = round(time.time() - clock.start, 2)
            checkpoint.save(c, env, metrics, history,
                            dict(model=raw, optimizer=opt, scaler=scaler, train_labels=labels,
                                 start=start, data=d['fingerprint']))
            log_wandb(c, env, metrics)
        if stopping:
            break
    return finish(c, it, history, clock, stop)


def optimizer_step(c, raw, opt, scaler):
    """Clip the gradients' global norm (unscaled first under float16), step AdamW, clear them."""
    if c.grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(raw.parameters(), c.grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def wrap(raw, c, env):
    """The model as the loop runs it: compiled (one graph to train, one to evaluate: every batch
    has the same shape), in DDP."""
    net = raw
    compiled = str(c.compile) == 'True' or (str(c.compile) == 'auto' and env.device.type == 'cuda')
    if str(c.compile) == 'auto' and compiled:
        print("--compile auto: on, on CUDA")
    elif str(c.compile) == 'auto':
        print(f"--compile auto: off on {env.device.type}, where compiled steps ran slower than "
              f"eager ones (bench.py); --compile True compiles anyway")
    if compiled:
        print("compiling the model: the first step and the first evaluation take longer")
        report_compile_times()
        net = torch.compile(raw)
    if env.world > 1:
        net = DDP(net, device_ids=[env.device.index] if env.device.type == 'cuda' else None)
    return net


def report_compile_times():
    """Prints how long each torch.compile took, when it ends (dynamo's own callbacks: no sync)."""
    from torch._dynamo.callback import callback_handler
    if compile_started not in callback_handler.start_callbacks:  # torch._dynamo.reset() clears
        callback_handler.register_start_callback(compile_started)
        callback_handler.register_end_callback(compile_ended)


def compile_started(*args):
    COMPILING.append(time.time())


def compile_ended(*args):
    print(f"compiled in {time.time() - COMPILING.pop():.1f} s")


def count(tallies, loss, logits, y):
    """Adds a micro-batch's mean loss, predictions and size to each tally, without a host sync."""
    for t in tallies:
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


def agree(flag, env):
    """True on every rank when it is True on any."""
    if env.world == 1:
        return flag
    t = torch.tensor(float(flag), device=env.device)
    dist.all_reduce(t)
    return t.item() > 0


def catch_signals():
    """SIGINT and SIGTERM, from main's first line -> the stop state the loop reads. Before training
    a signal stops at once (nothing was written yet); in training it is noted, and the loop stops
    after the current step with a checkpoint. A second signal stops at once, without one."""
    stop = SimpleNamespace(signum=0, training=False, left=0)

    def on_signal(signum, frame):
        if not stop.training:
            raise Stopped(signum, why='during start-up: nothing was written')
        if stop.signum:
            raise Stopped(signum, why='again: stopped at once, ckpt.pt keeps its last checkpoint')
        stop.signum = signum
        if int(os.environ.get('RANK', 0)) == 0:  # os.write: print is not safe in a handler
            os.write(2, f"{signal.Signals(signum).name}: the run stops with a checkpoint when "
                        f"this step ends ({stop.left} micro-step{'s' * (stop.left > 1)} left); a "
                        f"second signal stops at once, without one\n".encode())
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    return stop


class Clock:
    """The run's wall time (across resumes); images per second and MFU between progress lines."""

    def __init__(self, elapsed, flops_per_image, env):
        self.last = time.time()
        self.start = self.last - elapsed
        self.flops, self.peak = flops_per_image, peak_flops(env.device)

    def speed(self, images, world):
        """-> (images per second since the last call, ' | mfu x%' when the GPU's peak is known)."""
        now = time.time()
        img_s = images / max(now - self.last, 1e-9)
        self.last = now
        mfu = f" | mfu {img_s / world * self.flops / self.peak:.1%}" if self.peak else ''
        return img_s, mfu


def progress(c, env, it, total, per_epoch, lr, since_log, clock, history):
    """One progress line. A loss that is not finite stops the run; the last checkpoint stays."""
    loss, acc, n = summed(since_log, env)
    if not math.isfinite(loss):
        checkpoint.diverged(c, it, f"loss {loss}", history)
    img_s, mfu = clock.speed(n, env.world)
    eta = (total - it) * c.batch_size * c.grad_accum * env.world / img_s
    print(f"step {it}/{total} (epoch {it / per_epoch:.2f}) | loss {loss:.4f} | acc {acc:.1%} | "
          f"lr {lr:.2e} | {img_s:.0f} img/s{mfu} | eta {timedelta(seconds=round(eta))}")


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
    loss, acc, _ = summed(t, env)
    return dict(test_loss=loss, test_acc=acc)


def log_wandb(c, env, metrics):
    """An evaluation's metrics to Weights & Biases (--wandb), from rank 0."""
    if not c.wandb or env.rank > 0:
        return
    import wandb
    if wandb.run is None:
        wandb.init(project=os.environ.get('WANDB_PROJECT', 'bridge'), config=vars(c))
    wandb.log(metrics, step=metrics['iter'])


def finish(c, it, history, clock, stop):
    """The closing line: the final and best test accuracy, the time, the checkpoint. A run stopped
    by a signal ends in Stopped: exit status 130 (SIGINT) or 143 (SIGTERM), not 0."""
    best = max(history, key=lambda m: m['test_acc'])
    took = timedelta(seconds=round(time.time() - clock.start))
    print(f"done: {c.stage} stopped at step {it} after {took}; test "
          f"accuracy {history[-1]['test_acc']:.2%} (best {best['test_acc']:.2%}, step "
          f"{best['iter']}); checkpoint {c.out_dir}/ckpt.pt")
    if stop.signum:
        print(f"stopped by {signal.Signals(stop.signum).name} at step {it}, with a checkpoint; "
              f"continue with the same command and --init_from resume")
        raise Stopped(stop.signum, history[-1])
    return history[-1]


# ----------------------------------------------------------------- setup: flags, device, data, net
def configure(argv):
    """Flags -> (the run's config, the checkpoint it starts from or None, resuming?). All that needs
    no work is checked here, before data is decoded or weights are read: flags, files, sizes."""
    ranks()  # torchrun's variables, checked before anything else reads them
    c, given = parse(argv, globals(), CHOICES, POSITIVE)
    c.out_dir = c.out_dir.replace('{stage}', c.stage)
    c, ckpt, resuming = checkpoint.open_run(c, given)  # the run folder's rules
    check_flags(c, given, ckpt)
    return c, ckpt, resuming


def check_flags(c, given, ckpt):
    """What the flags must agree on with each other, and with the network they start from."""
    if c.stage == 'eval' and ckpt is None:
        raise UserError(f"--stage eval needs --init_from a ckpt.pt of bridge.py, not {c.init_from}")
    if 'model' in given and c.init_from != 'scratch':
        raise UserError("--model shapes a scratch model: use it with --init_from scratch")
    for k in ('random_label_fraction', 'random_label_mode'):
        if k in given and c.stage != 'bridge':
            raise UserError(f"--{k} is for --stage bridge: {c.stage} has true labels")
    check_ranges(c)
    if c.wandb and importlib.util.find_spec('wandb') is None:
        raise UserError("--wandb True needs the wandb package: pip install wandb")
    known = ckpt['model_config'] if ckpt else OFFICIAL.get(c.init_from)
    known = architecture(c.model) if c.init_from == 'scratch' else known
    check_image_config(GPTConfig(img_size=c.img_size, patch_size=c.patch_size,
                                 block_size=(known or {}).get('block_size', 1024)))
    if known:  # else an HF checkpoint: its depth is known once it loads
        freeze_spec(c.freeze, known['n_layer'])


def check_ranges(c):
    """The numbers whose range a type cannot say (every flag is already finite and >= 0)."""
    if c.random_label_fraction > 1:
        raise UserError(f"--random_label_fraction {c.random_label_fraction}: must be in [0, 1]")
    for k in ('dropout', 'label_smoothing'):  # 1 would drop every activation, or every target
        if getattr(c, k) >= 1:
            raise UserError(f"--{k} {getattr(c, k)}: must be in [0, 1)")
    if c.min_lr > c.lr:
        raise UserError(f"--min_lr {c.min_lr} is above --lr {c.lr}: the cosine decays to min_lr")
    if c.seed >= 2 ** 32:  # data order seeds 1_000_003 * seed + epoch, which must fit 64 bits
        raise UserError(f"--seed {c.seed}: must be below 2**32")


def setup(c, ckpt):
    """-> env: device, autocast dtype and context, rank, world, CPU threads. torchrun sets RANK:
    one GPU (or CPU process) per rank, each with its share of the cores (see set_threads); a resume
    takes its run's thread count (ckpt), so that its sums are the same."""
    rank, world, local = ranks()
    device = pick_device(c.device)
    if device.type == 'cuda' and world > 1:
        device = torch.device('cuda', local)
    if world > 1:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    threads = set_threads(device, (ckpt or {}).get('threads', 0))
    dtype = autocast_dtype(c.dtype, device)
    ctx = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    return SimpleNamespace(device=device, dtype=dtype, ctx=ctx, rank=rank, world=world,
                           threads=threads)


def fetch(c):
    """What the run needs from the network (OpenAI's weights, CIFAR), fetched before any other
    work; everything that cannot be had offline is named in one line, not one at a time."""
    failed = []
    for needed, get in ((c.init_from in OFFICIAL, lambda: download(c.init_from)),
                        (c.dataset in CIFAR, lambda: fetch_cifar(c.dataset, c.data_dir)),
                        (c.dataset == 'tinyimagenet', lambda: fetch_tiny_imagenet(c.data_dir))):
        try:
            if needed:
                get()
        except UserError as e:
            failed.append(str(e))
    if len(failed) > 1:
        raise UserError(f"{len(failed)} things need the network: " +
                        '; and '.join(f"({i}) {e}" for i, e in enumerate(failed, 1)))
    if failed:
        raise UserError(failed[0])


def load_data(c, ckpt, resuming, env):
    """The dataset on the device. A resume needs exactly the run's data (its fingerprint), --stage
    eval the classes its head learned. Rank 0 goes first, so that a download happens once."""
    if env.rank > 0:
        dist.barrier()
    fetch(c)
    d = load_dataset(c.dataset, c.data_dir, c.img_size, env.device, c.num_workers)
    if env.world > 1 and env.rank == 0:
        dist.barrier()
    checkpoint.check_data(c, ckpt, resuming, d)
    return d


if __name__ == '__main__':
    run_cli(main)
