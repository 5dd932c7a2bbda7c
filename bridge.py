"""
Random-label bridge training, then fine-tuning: the two stages of Luo & Shen (TMLR 2026).

  python bridge.py --stage bridge --freeze 0-5                        # 1: random labels
  python bridge.py --stage finetune --init_from out/bridge/ckpt.pt --epochs 200  # 2: true labels
  python bridge.py --stage eval --init_from out/finetune/ckpt.pt      # a checkpoint's accuracy
  python bridge.py config/bridge_p5.py --epochs 100                   # an experiment's file, flags
  torchrun --standalone --nproc_per_node=8 bridge.py ...              # several GPUs (DDP)

This file is the method; harness.py keeps the run's life (its folder and lock, signals, progress,
checkpoints, ranks) behind `Run`. Ctrl-C (or SIGTERM) stops when the current step ends, with a
checkpoint, and exits 130 (143); the same command with --init_from resume continues it bit for bit.
"""
import math

import torch
import torch.nn.functional as F

from configurator import UserError, cores, run_cli
from data import augment, eval_batches, random_labels, steps_per_epoch, train_batches
from harness import Run, summed

# ----------------------------------------------------------------- flags (the paper's CIFAR-10 run)
stage = 'bridge'               # bridge: random labels | finetune: the true labels | eval: accuracy
init_from = 'gpt2-medium'      # gpt2[-medium, -large, -xl], scratch, resume, ckpt.pt, HF dir/file
model = 'gpt2-medium'          # --init_from scratch: an OpenAI size, or LAYERSxWIDTH such as 4x128
freeze = 'none'                # kept at their loaded values: 0-5 = the first five blocks
reinit_head = False            # a new classifier on a ckpt.pt (always when its classes differ)
dataset = 'cifar10'            # data.DATASETS: cifar10, cifar100, tinyimagenet, folder (DATA_DIR)
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
dtype = 'auto'                 # auto: bf16 on CUDA and bf16 CPUs | bfloat16 | float16 | float32
compile = 'auto'               # auto: torch.compile on CUDA only | True | False
out_dir = 'out/{stage}'        # the run's folder: ckpt.pt, config.json, metrics.jsonl
auto_resume = False            # resume this command's run in out_dir if any (a requeued job)
eval_interval = 0              # steps between evaluations + checkpoints; 0: once an epoch
ckpt_minutes = 30.0            # an evaluation + checkpoint at least this often too; 0: off
log_interval = 20              # steps between progress lines (the loop's only host syncs)
num_workers = cores()          # processes decoding image folders: this process's share of cores
wandb = False                  # also log to Weights & Biases (project $WANDB_PROJECT, else bridge)
peer_timeout = 600             # seconds processes started by hand (no torchrun) wait for peers


def main(argv):
    with Run(argv, globals()) as run:  # flags checked, out_dir held, signals caught, device set
        c = run.c
        d = run.data()
        net, start = run.model(d['classes'])
        if c.stage == 'eval':
            return run.report(evaluate(net, d, c, run.env))
        # the method: stage 1 trains on random labels, stage 2 on the true ones; frozen blocks
        # keep their language weights (partial bridge training); AdamW trains the rest
        labels = train_labels(c, d, run.own)
        net.freeze(c.freeze)
        if not any(p.requires_grad for p in net.parameters()):
            raise UserError(f"--freeze {c.freeze} leaves nothing to train")
        opt = net.configure_optimizers(c.weight_decay, c.lr, (0.9, 0.999))
        return train(run, d, net, opt, labels, start)


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
def train(run, d, raw, opt, labels, start):
    """Warmup + cosine, gradient accumulation, clipping; run.log prints progress every
    log_interval steps and asks for an evaluation and a checkpoint every eval_interval. A signal
    stops it after the current step (under DDP at the next progress line), with a checkpoint."""
    c, env = run.c, run.env
    per_epoch = steps_per_epoch(len(labels), c.batch_size, env.world) / c.grad_accum
    total, warmup = schedule(c, per_epoch)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.dtype == torch.float16)
    it = run.resume(opt, scaler)  # 0, or a resumed run's step, its optimizer state loaded
    net = run.wrap(raw)  # compiled, in DDP
    batches = train_batches(d['train'][0], labels.to(env.device), c.batch_size, it * c.grad_accum,
                            c.seed, env.rank, env.world, c.num_workers)
    run.begin(it, total, per_epoch, warmup, lambda step: lr_at(step, c, warmup, total))
    while it < total:
        lr = lr_at(it, c, warmup, total)
        for group in opt.param_groups:
            group['lr'] = lr
        torch.manual_seed(hash((c.seed, env.rank, it)))  # augmentation, dropout: (seed, rank, step)
        for micro in range(c.grad_accum):
            x, y = next(batches)
            if env.world > 1:  # all-reduce the gradients on the last micro-step only
                net.require_backward_grad_sync = micro == c.grad_accum - 1
            with env.ctx:
                logits = net(augment(x, c.aug, c.img_size, d['mean'], d['std'])).float()
                loss = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
            scaler.scale(loss / c.grad_accum).backward()
            run.count(loss, logits, y)
        optimizer_step(c, raw, opt, scaler)
        it += 1
        if run.log(it, lr):  # an evaluation and a checkpoint are due
            run.save(it, lr, evaluate(net, d, c, env),
                     dict(model=raw, optimizer=opt, scaler=scaler, train_labels=labels,
                          start=start, data=d['fingerprint']))
        if run.should_stop():
            break
    return run.finish(it)


def optimizer_step(c, raw, opt, scaler):
    """Clip the gradients' global norm (unscaled first under float16), step AdamW, clear them."""
    if c.grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(raw.parameters(), c.grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


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


if __name__ == '__main__':
    run_cli(main)
