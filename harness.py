"""
The run's life around bridge.py's method, behind one object, so that the training loop reads as
nanoGPT's: bridge.py meets this module only through the names below.

  with Run(argv, globals()) as run:     # flags checked, folder held, signals caught, device set
      d = run.data()                    # the dataset on the device (fetched first if needed)
      net, start = run.model(classes)   # the weights the run starts from, on the device
      it = run.resume(opt, scaler)      # 0, or a resumed run's step with its optimizer state
      net = run.wrap(net)               # compiled, in DDP
      run.begin(it, total, ...)         # the plan line; from here a signal waits for the step
      run.count(loss, logits, y)        # each micro-step's tallies, on the device
      if run.log(it, lr): run.save(...) # a progress line when due; evaluate + checkpoint when due
      run.should_stop(); run.finish(it) # a signal's stop after the step; the closing line

Inside: the run folder's lock and its rules (checkpoint.py), SIGINT/SIGTERM (stop after the current
step, with a checkpoint, exit 130/143), the clock and progress lines, the divergence guard,
cross-rank agreement, compile timing, the out-of-memory line, Weights & Biases.
"""
import contextlib
import importlib.util
import math
import os
import signal
import socket
import sys
import time
from datetime import timedelta
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
from configurator import (Stopped, UserError, autocast_dtype, native_bf16, parse, peak_flops,
                          pick_device, ranks, set_threads, to_json)
from data import DATASETS, load_dataset, take
from model import GPTConfig, architecture, check_image_config, freeze_spec
from weights import OFFICIAL

POSITIVE = ('epochs', 'batch_size', 'grad_accum', 'log_interval', 'img_size', 'patch_size')
COMPILING = []  # the start times of the torch.compile calls under way


class Run:
    """One run of bridge.py: its flags (c), device (env), folder, signals, clock and history."""

    def __init__(self, argv, flags):
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self.stop = catch_signals()  # first: a signal during start-up stops at once, unwritten
        quiet = os.environ.get('RANK', '0') not in ('', '0')  # under torchrun, rank 0 speaks
        self.speaking = contextlib.redirect_stdout(open(os.devnull, 'w') if quiet else sys.stdout)
        self.speaking.__enter__()
        try:
            self.c, self.ckpt, self.resuming = configure(argv, flags)
            self.own = self.ckpt if self.resuming else None  # its labels, optimizer, step
            self.env = setup(self.c, self.own)
        except BaseException:  # a failed start hands back the folder and the signals, too
            self.close()
            raise
        env = self.env
        print(f"device {env.device}, {dtype_of(self.c, env)}, {env.world} "
              f"process{'es' * (env.world > 1)}, {env.threads} CPU thread{'s' * (env.threads > 1)} "
              f"each (OMP_NUM_THREADS sets them)")
        if self.own:  # a resume says whether its sums are ordered as its run's were
            checkpoint.threads_of_run(self.own.get('threads'), env.threads)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        self.close()
        if isinstance(error, torch.OutOfMemoryError):  # CUDA's (or MPS's), a step or an eval
            raise UserError(out_of_memory(self.c, self.env)) from None
        if self.env.world > 1 and isinstance(error, RuntimeError) and 'by peer' in str(error):
            # a collective failed because another rank stopped: that rank said why, this one
            # ends quietly (exit 1) instead of burying its line under a traceback
            raise UserError(f"rank {self.env.rank}: another process stopped") from None

    def close(self):
        """The run folder's lock goes; in-process callers get their signal handlers and stdout
        back."""
        self.speaking.__exit__(None, None, None)
        checkpoint.release()
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        if dist.is_initialized():
            dist.destroy_process_group()

    def data(self):
        """The dataset on the device. A resume needs exactly the run's data (its fingerprint),
        --stage eval the classes its head learned. Rank 0 goes first: a download happens once."""
        if self.env.rank > 0:
            dist.barrier()
        fetch(self.c)
        d = load_dataset(self.c.dataset, self.c.data_dir, self.c.img_size, self.env.device,
                         self.c.num_workers)
        for split, n in (('train', self.c.subset), ('test', self.c.test_subset)):
            if n:  # the fingerprint stays the whole dataset's; the flags and --seed pick the part
                d = take(d, split, n, self.c.seed, f"--{'test_' * (split == 'test')}subset")
        if self.env.world > 1 and self.env.rank == 0:
            dist.barrier()
        same_data_on_every_rank(self.c, self.env, d['fingerprint'])
        checkpoint.check_data(self.c, self.ckpt, self.resuming, d)
        return d

    def model(self, classes):
        """-> (the network the run starts from, on the device; the record of those weights)."""
        net, start = checkpoint.start_model(self.c, self.ckpt, self.resuming, classes)
        return net.to(self.env.device), start

    def report(self, result):
        """--stage eval: one line of JSON; a test loss that is not finite exits 1."""
        result = dict(init_from=self.c.init_from, dataset=self.c.dataset,
                      data_dir=self.c.data_dir, **result)
        print(to_json(result))
        if not math.isfinite(result['test_loss']):
            raise UserError(f"{self.c.init_from}: test loss {result['test_loss']}: its weights "
                            f"diverged")
        return result

    def resume(self, opt, scaler):
        """-> the step the loop starts at: a resumed run's (its optimizer and scaler loaded), or
        0."""
        it, self.history = checkpoint.resume_state(self.c, opt, scaler, self.own)
        return it

    def wrap(self, raw):
        """The model as the loop runs it: compiled (one graph to train, one to evaluate: every
        batch has the same shape), in DDP."""
        c, env, net = self.c, self.env, raw
        self.flops_per_image = raw.flops_per_image()  # for MFU and the cost line
        trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
        weights = sum(v.numel() * v.element_size() for v in raw.state_dict().values())
        self.ckpt_bytes = weights + 8 * trainable  # + AdamW's two float32 moments
        on_cuda = env.device.type == 'cuda'
        compiled = str(c.compile) == 'True' or (str(c.compile) == 'auto' and on_cuda)
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
            net = DDP(net, device_ids=[env.device.index] if on_cuda else None)
        return net

    def begin(self, it, total, per_epoch, warmup, lr_of):
        """The plan line; the clock starts; from here a signal stops the run after its step.
        lr_of(step): the schedule, to say when a resume with a new one moves the learning rate."""
        c, env = self.c, self.env
        if self.history and lr_of(it - 1) != self.history[-1]['lr']:  # --max_iters, --epochs
            print(f"the schedule now ends at step {total}: the learning rate goes from the run's "
                  f"{self.history[-1]['lr']:.2e} (step {it}) to {lr_of(it):.2e}")
        self.total, self.per_epoch = total, per_epoch
        self.eval_every = c.eval_interval or max(1, round(per_epoch))
        # running [loss sum, correct, images] on the device: one tensor each, one all-reduce each
        self.since_log = torch.zeros(3, device=env.device)
        self.since_eval = torch.zeros(3, device=env.device)
        print(f"{total} step{'s' * (total != 1)} ({per_epoch:.1f} an epoch) of "
              f"{c.batch_size * c.grad_accum * env.world} images: lr {c.lr:.2e}, warmup "
              f"{warmup} steps, cosine to {c.min_lr:g}; eval every {self.eval_every} steps "
              f"into {c.out_dir}")
        print(cost(self, total, c.batch_size * c.grad_accum * env.world))
        self.clock = Clock(self.own['elapsed_s'] if self.own else 0.0, self.flops_per_image, env)
        self.saved_at = time.time()
        self.stopping, self.stop.steps = False, c.grad_accum
        self.stop.training = True  # a signal is noted from here on, and honoured between steps

    def count(self, loss, logits, y):
        """Adds a micro-batch's mean loss, predictions and size to the tallies, no host sync."""
        for t in (self.since_log, self.since_eval):
            t[0] += loss.detach() * len(y)
            t[1] += (logits.detach().argmax(1) == y).sum()
            t[2] += len(y)  # a Python number as a kernel argument: no copy to the device
        self.stop.micro += 1

    def log(self, it, lr):
        """A progress line every log_interval steps (the loop's only host syncs), and where the
        ranks agree whether to stop, and whether --ckpt_minutes have passed since the last
        checkpoint. -> True when an evaluation and a checkpoint are due."""
        noted = bool(self.stop.signum) and self.env.world == 1  # no host sync: a Python flag
        due = it % self.eval_every == 0 or it == self.total
        if not (noted or due or it % self.c.log_interval == 0):
            return False
        minutes = (time.time() - self.saved_at) / 60
        timed = bool(self.c.ckpt_minutes) and minutes >= self.c.ckpt_minutes
        # all stop (or save) at the same step: one all-reduce for both
        self.stopping, timed = agree(self.env, bool(self.stop.signum), timed)
        progress(self, it, lr)
        return due or self.stopping or timed

    def save(self, it, lr, test, state):
        """An evaluation's metrics (test: the test split's), then a checkpoint of state."""
        train_loss, train_acc, _ = summed(self.since_eval, self.env)
        metrics = dict(iter=it, epoch=round(it / self.per_epoch, 4), lr=lr, train_loss=train_loss,
                       train_acc=train_acc, **test)
        metrics['elapsed_s'] = round(time.time() - self.clock.start, 2)
        checkpoint.save(self.c, self.env, metrics, self.history, state)
        self.saved_at = time.time()  # --ckpt_minutes counts from here
        log_wandb(self.c, self.env, metrics)

    def should_stop(self):
        """Whether the ranks agreed at the last progress line to stop after this step."""
        return self.stopping

    def finish(self, it):
        """The closing line: the final and best test accuracy, the time, the checkpoint. A run
        stopped by a signal ends in Stopped: exit status 130 (SIGINT) or 143 (SIGTERM), not 0."""
        last, best = self.history[-1], max(self.history, key=lambda m: m['test_acc'])
        took = timedelta(seconds=round(time.time() - self.clock.start))
        how = 'finished' if it == self.total else 'stopped'
        print(f"done: {self.c.stage} {how} at step {it} after {took}; test accuracy "
              f"{last['test_acc']:.2%} (best {best['test_acc']:.2%}, step {best['iter']}); "
              f"checkpoint {self.c.out_dir}/ckpt.pt")
        if self.stop.signum:
            how = '' if self.c.auto_resume else ' and --init_from resume'
            print(f"stopped by {signal.Signals(self.stop.signum).name} at step {it}, with a "
                  f"checkpoint; continue with the same command{how}")
            raise Stopped(self.stop.signum, last)
        return last


# ----------------------------------------------------------------- start-up: flags, device, data
def configure(argv, flags):
    """Flags -> (the run's config, the checkpoint it starts from or None, resuming?). All that needs
    no work is checked here, before data is decoded or weights are read: flags, files, sizes."""
    ranks()  # torchrun's variables, checked before anything else reads them
    c, given = parse(argv, flags, dict(dataset=tuple(DATASETS)), POSITIVE)
    c.out_dir = c.out_dir.replace('{stage}', c.stage)
    defaults = {k: flags[k] for k in vars(c)}  # the flag lines' values: for runs older than one
    c, ckpt, resuming = checkpoint.open_run(c, given, defaults)  # the run folder's rules
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
        join(c, 'nccl' if device.type == 'cuda' else 'gloo', rank, world)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    threads = set_threads(device, (ckpt or {}).get('threads', 0))
    dtype = autocast_dtype(c.dtype, device)
    ctx = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    return SimpleNamespace(device=device, dtype=dtype, ctx=ctx, rank=rank, world=world,
                           threads=threads)


def dtype_of(c, env):
    """The autocast dtype, and on a CPU why --dtype auto chose it."""
    name = str(env.dtype).removeprefix('torch.')
    if c.dtype != 'auto' or env.device.type != 'cpu':
        return name
    if native_bf16():
        return f"{name} (auto: this CPU multiplies in bfloat16 natively)"
    return f"{name} (auto: this CPU has no bfloat16 multiply instructions)"


def join(c, backend, rank, world):
    """Into the process group. torchrun's agent started the ranks together; processes started by
    hand (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) wait for each other here, say for what, and
    give up after --peer_timeout seconds (torch alone would wait 30 minutes without a word)."""
    if 'TORCHELASTIC_RUN_ID' in os.environ:
        return dist.init_process_group(backend)
    addr, port = os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']
    print(f"rank {rank} of {world}: waiting for the other {world - 1} at {addr}:{port}, at most "
          f"{c.peer_timeout} s (--peer_timeout)", file=sys.__stdout__, flush=True)  # every rank
    deadline = time.monotonic() + c.peer_timeout
    try:
        if rank:  # quietly, until rank 0 listens (torch's client logs every failed try)
            reach(addr, int(port), deadline)
        wait = timedelta(seconds=max(1.0, deadline - time.monotonic()))
        store = dist.TCPStore(addr, int(port), world, rank == 0, timeout=wait)
    except (ValueError, OSError, RuntimeError) as e:  # torch's DistError is a RuntimeError
        why = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise UserError(f"rank {rank}: the other processes of WORLD_SIZE={world} did not join at "
                        f"{addr}:{port} within {c.peer_timeout} s ({why}): start all of them "
                        f"(RANK 0 to {world - 1}) with the same MASTER_ADDR and MASTER_PORT, or "
                        f"use torchrun", alone=True) from None
    store.set_timeout(timedelta(minutes=30))  # torch's default, for every collective
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)


def reach(addr, port, deadline):
    """Returns once addr:port accepts a connection; an OSError at the deadline."""
    while True:
        try:
            socket.create_connection((addr, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def fetch(c):
    """What the run needs from the network (OpenAI's weights, a dataset), fetched before any other
    work; everything that cannot be had offline is named in one line, not one at a time."""
    needed = [c.init_from] * (c.init_from in OFFICIAL)
    needed += [c.dataset] * DATASETS[c.dataset]['fetched']
    failed = []
    for name in needed:
        from downloads import download  # read only by a run that needs the network
        try:
            download(name, c.data_dir)
        except UserError as e:
            failed.append(str(e))
    if len(failed) > 1:
        raise UserError(f"{len(failed)} things need the network: " +
                        '; and '.join(f"({i}) {e}" for i, e in enumerate(failed, 1)))
    if failed:
        raise UserError(failed[0])


def same_data_on_every_rank(c, env, fingerprint):
    """Every process (every node of a multi-node job) must read the same images and labels: one
    whose copy of the data differs stops the job, on every rank, with one line."""
    if env.world == 1:
        return
    prints = [None] * env.world
    dist.all_gather_object(prints, fingerprint)
    differ = [r for r, p in enumerate(prints) if p != prints[0]]
    if differ:
        keys = [k for k in prints[0] if prints[differ[0]][k] != prints[0][k]]
        raise UserError(f"{c.dataset} at {c.data_dir} is not the same data on every process: "
                        f"rank {differ[0]}'s {', '.join(keys)} differ from rank 0's (every node "
                        f"needs the same copy)")


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


# ----------------------------------------------------------------- compile timing
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


# ----------------------------------------------------------------- signals, ranks, progress
def catch_signals():
    """SIGINT and SIGTERM, from the run's first line -> the stop state the loop reads. Before
    training a signal stops at once (nothing was written yet); in training it is noted, and the
    loop stops after the current step with a checkpoint. A second signal stops at once."""
    stop = SimpleNamespace(signum=0, training=False, micro=0, steps=1)

    def on_signal(signum, frame):
        if not stop.training:
            raise Stopped(signum, why='during start-up: nothing was written')
        if stop.signum:
            raise Stopped(signum, why='again: stopped at once, ckpt.pt keeps its last checkpoint')
        stop.signum = signum
        left = stop.steps - stop.micro % stop.steps  # the micro-steps this step still runs
        if int(os.environ.get('RANK', 0)) == 0:  # os.write: print is not safe in a handler
            os.write(2, f"{signal.Signals(signum).name}: the run stops with a checkpoint when "
                        f"this step ends ({left} micro-step{'s' * (left > 1)} left); a "
                        f"second signal stops at once, without one\n".encode())
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    return stop


def summed(t, env):
    """A tally summed over ranks, then reset -> (mean loss, accuracy, images)."""
    if env.world > 1:
        dist.all_reduce(t)
    loss, correct, n = t.tolist()
    t.zero_()
    return loss / n, correct / n, n


def cost(run, total, per_step):
    """The line a run prints before it trains: what it will cost. Its steps and images, its training
    FLOPs (model.flops_per_image), the size of each checkpoint, and on a GPU whose peak is known
    (H100, H200, A100) its time at 40% MFU."""
    flops = total * per_step * run.flops_per_image
    line = (f"cost: {total:,} steps x {per_step} images = {total * per_step:,} images, {flops:.3g} "
            f"FLOPs to train ({run.flops_per_image:.3g} an image); each checkpoint "
            f"{run.ckpt_bytes / 1e6:,.1f} MB (weights and AdamW's moments)")
    peak = peak_flops(run.env.device)
    if peak:
        hours = flops / (0.4 * peak * run.env.world) / 3600
        line += f"; {hours:.1f} h at 40% MFU on {run.env.world} of this GPU"
    return line


def agree(env, *flags):
    """Each flag, True on every rank when it is True on any (one all-reduce for all of them)."""
    if env.world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=env.device)
    dist.all_reduce(t)
    return tuple(v > 0 for v in t.tolist())


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


def progress(run, it, lr):
    """One progress line. A loss that is not finite stops the run; the last checkpoint stays."""
    c, env = run.c, run.env
    loss, acc, n = summed(run.since_log, env)
    if not math.isfinite(loss):
        checkpoint.diverged(c, it, f"loss {loss}", run.history)
    img_s, mfu = run.clock.speed(n, env.world)
    eta = (run.total - it) * c.batch_size * c.grad_accum * env.world / img_s
    rate = f"{img_s:.1f}" if img_s < 10 else f"{img_s:.0f}"  # a CPU's 3 img/s, not 0 or 3
    print(f"step {it}/{run.total} (epoch {it / run.per_epoch:.2f}) | loss {loss:.4f} | acc "
          f"{acc:.1%} | lr {lr:.2e} | {rate} img/s{mfu} | eta {timedelta(seconds=round(eta))}")


def log_wandb(c, env, metrics):
    """An evaluation's metrics to Weights & Biases (--wandb), from rank 0."""
    if not c.wandb or env.rank > 0:
        return
    import wandb
    if wandb.run is None:
        wandb.init(project=os.environ.get('WANDB_PROJECT', 'bridge'), config=vars(c))
    wandb.log(metrics, step=metrics['iter'])
