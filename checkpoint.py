"""
A run's folder (--out_dir) and the rules that keep it honest: what is read from it, what is checked
against it, and how it is written. harness.py (bridge.py's run) calls it in a few named places:

  c, ckpt, resuming = open_run(c, given, defaults)  # fresh, hand-off or resume: checked first
  check_data(c, ckpt, resuming, d)        # a resume trains on exactly its data, eval on its classes
  net, start = start_model(c, ckpt, resuming, classes)  # its weights, and their fingerprint
  it, history = resume_state(c, opt, scaler, ckpt)  # the optimizer and step of a resume
  save(c, env, metrics, history, state)   # ckpt.pt, metrics.jsonl, config.json, each atomically

analysis.py and export.py read runs with load_run: a ckpt.pt, or a run directory for the weights
that run started from (rebuilt, and checked against their fingerprint).

ckpt.pt holds everything a resume needs: the weights, optimizer and GradScaler, the run's flags and
step, the labels trained on, the metrics so far, and fingerprints of the data and of the weights the
run started from (init_model rebuilds those bit for bit, so analysis.py can check a rebuild).
"""
import contextlib
import fcntl
import hashlib
import json
import math
import os
import zipfile
from dataclasses import asdict
from types import SimpleNamespace

import torch

from configurator import UserError, ranks, to_json
from model import GPT, GPTConfig, architecture
from weights import OFFICIAL, SIZES, check_keys, export_config, read_weights

# what a resumed run may change; any other flag must keep the run's value, or its checkpoint lies
RESUMABLE = ('init_from', 'out_dir', 'data_dir', 'epochs', 'max_iters', 'eval_interval',
             'log_interval', 'device', 'dtype', 'compile', 'num_workers', 'wandb', 'auto_resume',
             'peer_timeout', 'ckpt_minutes')
OWN = ('ckpt.pt', 'metrics.jsonl', 'config.json')  # the files a run writes, and the only ones
LOCK = 'run.lock'  # held (flock) by the run writing into the folder; it holds that process's pid
HELD = {}          # out_dir -> (the lock's open file, the highest folder this run created or '')
VERIFIED = set()   # (device, inode, size, mtime) of the checkpoints whose CRC-32s passed
LEGACY = dict(pool='last', causal=True)  # GPTConfig fields until 2026-11-30: their only values


# ----------------------------------------------------------------- reading a run's folder
def open_run(c, given, defaults):
    """-> (the run's config, the checkpoint it starts from or None, resuming?). A resume takes the
    run's own flags; a hand-off takes its network's sizes; a fresh run never replaces a run. A run
    that trains holds its folder (claim) from here to its end (release)."""
    resuming, ckpt = c.init_from == 'resume', None
    if c.stage != 'eval':
        claim(c.out_dir)
        resuming = resuming or own_run(c)
    if resuming:
        path = os.path.join(c.out_dir, 'ckpt.pt')
        if not os.path.isfile(path):
            raise UserError(f"--init_from resume: no checkpoint at {path} (the run's --out_dir?)")
        ckpt = read_checkpoint(path)
        c = resumed(c, given, ckpt, defaults)
    elif c.init_from.endswith(('.pt', '.pth')):
        ckpt = read_checkpoint(c.init_from)
        handed_on(c, given, ckpt['model_config'], ckpt['config'])
    elif export_config(c.init_from) is not None:  # a network export.py wrote
        handed_on(c, given, export_config(c.init_from))
    elif c.init_from not in (*OFFICIAL, 'scratch') and not os.path.exists(c.init_from):
        raise UserError(f"--init_from {c.init_from}: no such file or directory; use "
                        f"{', '.join(OFFICIAL)}, scratch, resume, a ckpt.pt written by bridge.py, "
                        f"or a Hugging Face checkpoint (a directory, .safetensors or .bin)")
    if c.stage != 'eval' and not resuming:
        check_fresh(c.out_dir)
    return c, ckpt, resuming


def own_run(c):
    """--auto_resume: whether out_dir holds this command's run (its stage and init_from), which is
    then continued exactly as --init_from resume would; with no checkpoint the run starts. Another
    run's checkpoint is refused by check_fresh, as without the flag."""
    if not c.auto_resume:
        return False
    path = os.path.join(c.out_dir, 'ckpt.pt')
    if not os.path.exists(path):
        print(f"--auto_resume: {c.out_dir} holds no checkpoint: starting the run")
        return False
    run = read_checkpoint(path)
    if (run['config']['stage'], run['config']['init_from']) != (c.stage, c.init_from):
        return False
    print(f"--auto_resume: {c.out_dir} holds this run at step {run['iter']}: continuing it")
    return True


# ----------------------------------------------------------------- a run owns its folder
def claim(out_dir):
    """Create out_dir if needed and lock it for this run: a second run into it (fresh or resume)
    is refused; a lock whose process died holds nothing (the kernel drops a flock with its owner).
    Writing the pid is the probe that the folder is writable. Stale temporary files of our own
    names, left by a killed write, are removed; nothing else is touched."""
    if not out_dir.strip():
        raise UserError("--out_dir '': expected a directory path for the run's files")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out_dir {out_dir} is a file: the run's files go in a folder")
    if ranks()[0] > 0:  # rank 0 holds the folder for all ranks
        return
    created = ''  # the highest folder of out_dir's path that does not exist yet
    for folder in (out_dir, *parents(out_dir)):
        if os.path.exists(folder):
            break
        created = folder
    try:
        os.makedirs(out_dir, exist_ok=True)
        f = take_lock(os.path.join(out_dir, LOCK))
        f.seek(0)
        stale = f.read().strip()
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"cannot write into --out_dir {out_dir}: {e.strerror}") from None
    HELD[out_dir] = (f, created)
    if stale:
        print(f"{out_dir}: taking over the lock of pid {stale}, which no longer runs")
    remove_stale_writes(out_dir)


def take_lock(path):
    """path opened and flocked by this process -> the open file; a UserError that names the
    holder's pid while another process holds it."""
    while True:
        f = open(path, 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or 'unknown'
            f.close()
            raise UserError(f"{os.path.dirname(path)} is in use by another run (pid {holder} holds "
                            f"{path}): wait for it to end, or use another --out_dir") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        f.close()  # its holder removed the file as we opened it: lock the new one


def remove_stale_writes(out_dir):
    """Removes ckpt.pt.tmp, metrics.jsonl.tmp, config.json.tmp: a killed write's, as the folder is
    held now. Only these names: a fresh run never deletes a file it did not write."""
    for name in OWN:
        path = os.path.join(out_dir, name + '.tmp')
        if os.path.isdir(path):  # the first save would fail on it, after the training
            raise UserError(f"{path} is a folder, not a file of a killed write: the run writes "
                            f"{name} through that name; move it away")
        if os.path.isfile(path):
            print(f"removing {path} ({os.path.getsize(path) / 1e6:.1f} MB), left by a killed write")
            os.remove(path)


def check_fresh(out_dir):
    """A fresh run goes into a new or empty folder, or one that holds a run of ours without its
    checkpoint; it never replaces a run, and never mixes with files it did not write."""
    old = os.path.join(out_dir, 'ckpt.pt')
    if os.path.islink(old) and not os.path.exists(old):  # a disk that is not mounted, say
        raise UserError(f"{old} links to {os.readlink(old)}, which does not exist: a run's "
                        f"checkpoint out of reach is never replaced; mount it, or use another "
                        f"--out_dir")
    if os.path.exists(old):  # a run is never replaced
        old = read_checkpoint(old)
        raise UserError(f"{out_dir} holds a {old['config']['stage']} run at step {old['iter']}: "
                        f"continue it with --init_from resume, or start elsewhere with another "
                        f"--out_dir (or delete {out_dir})")
    names = set(os.listdir(out_dir) if os.path.isdir(out_dir) else [])
    foreign = names - {*OWN, LOCK}
    if 'config.json' in names and not is_our_config(os.path.join(out_dir, 'config.json')):
        foreign.add('config.json')  # a Hugging Face model's, say: never overwritten
    foreign = sorted(foreign)
    if foreign:
        raise UserError(f"{out_dir} holds files that bridge.py did not write "
                        f"({', '.join(foreign[:3])}{', ...' * (len(foreign) > 3)}): a fresh run "
                        f"goes into a new or empty folder; use another --out_dir")


def is_our_config(path):
    """Whether path is the config.json of a run of bridge.py (not, say, a Hugging Face model's)."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {'stage', 'model_config', 'out_dir'} <= config.keys()


def parents(path):
    """path's folders above it, nearest first: 'out/a/b' -> 'out/a', 'out'."""
    path = os.path.dirname(os.path.normpath(path))
    while path and path != os.path.dirname(path):
        yield path
        path = os.path.dirname(path)


def release():
    """Ends this process's hold on its run folders: the lock file goes, and the folders this run
    created and left empty go too, up to the highest it created (a start that failed leaves no
    trace)."""
    while HELD:
        out_dir, (f, created) = HELD.popitem()
        with contextlib.suppress(OSError):
            os.remove(os.path.join(out_dir, LOCK))
            if created:
                remove_empty(out_dir, created)
        f.close()


def remove_empty(out_dir, top):
    """Removes out_dir, then its parents up to top, each while it is empty (else OSError)."""
    for folder in (out_dir, *parents(out_dir)):
        os.rmdir(folder)
        if os.path.normpath(folder) == os.path.normpath(top):
            return


def read_checkpoint(path):
    """A ckpt.pt written by bridge.py -> dict. Every record of the archive must pass its CRC-32
    first (a flipped or missing byte is refused before any work); then it is memory-mapped, so
    that what is not used is never read again."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: no such file")
    verify(path)
    ckpt = read_weights(path, mmap=True)
    if not (isinstance(ckpt, dict) and {'model', 'model_config', 'config'} <= ckpt.keys()):
        raise UserError(f"{path} is not a checkpoint written by bridge.py")
    for k, always in LEGACY.items():  # GPTConfig fields until 2026-11-30, with their one value
        if k not in GPTConfig.__dataclass_fields__ and ckpt['model_config'].get(k) == always:
            del ckpt['model_config'][k]
    missing = {'iter', 'history', 'data', 'start', 'world'} - ckpt.keys()
    if missing:  # the run's metrics, data and start were not kept before these were added
        raise UserError(f"{path} was written by an older bridge.py (it has no "
                        f"{', '.join(sorted(missing))}): its weights are ckpt['model']; rerun its "
                        f"stage to resume or hand it on")
    unknown = set(ckpt['model_config']) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        raise UserError(f"{path}: its model_config has fields GPTConfig does not know "
                        f"({', '.join(sorted(unknown))}): written by another version of model.py?")
    return ckpt


def verify(path):
    """Every record of a torch.save archive against the CRC-32 stored with it (torch.load itself
    checks none of the tensor data). Once per file and version in a process: analysis.py names a
    run's checkpoint more than once, and a 4 GB one takes seconds to read."""
    st = os.stat(path)
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if version in VERIFIED:
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: not a whole torch.save archive ({e})") from None
    if bad is not None:
        raise UserError(f"cannot read {path}: it is damaged ({bad} fails its CRC-32 check: "
                        f"flipped or lost bytes); use a copy, or start the run again")
    VERIFIED.add(version)


def resumed(c, given, ckpt, defaults):
    """The run's own config; a flag given again must repeat the run's value unless RESUMABLE. A
    flag added to bridge.py since the run started takes its default (defaults), and says so."""
    run = dict(ckpt['config'])
    lacks = sorted(set(vars(c)) - set(run))
    if lacks:
        run.update({k: defaults[k] for k in lacks})
        shown = ', '.join(f"--{k} {defaults[k]!r}" for k in lacks)
        print(f"{c.out_dir}/ckpt.pt predates {shown}: the run resumes with "
              f"{'these defaults' if len(lacks) > 1 else 'its default'}")
    for k in sorted(given - set(RESUMABLE)):
        if getattr(c, k) != run[k]:
            raise UserError(f"--init_from resume continues {c.out_dir} as it was: --{k} "
                            f"{getattr(c, k)!r} is not the run's {run[k]!r} (a resume may change "
                            f"only --{', --'.join(RESUMABLE[1:])})")
    if ckpt['world'] != ranks()[1]:
        raise UserError(f"{c.out_dir} ran as {ckpt['world']} processes: resume it with as many")
    given_again = {k: getattr(c, k) for k in given - {'init_from'}}
    return SimpleNamespace(**{**run, **given_again, 'out_dir': c.out_dir})


def handed_on(c, given, sizes, config=None):
    """Stage 1 -> stage 2: the sizes that make the network come from its checkpoint or export (a
    flag may only repeat them); a checkpoint's run (config) also hands on its dataset and data_dir
    unless they are given, and says which blocks it froze and whether they train now."""
    for k in SIZES:
        have = sizes[k]
        if k in given and getattr(c, k) != have:
            raise UserError(f"--{k} {getattr(c, k)}: {c.init_from} was trained with {k} {have}, "
                            f"part of its network; leave the flag out")
        setattr(c, k, have)
    if config is None:
        return
    kept = [k for k in ('dataset', 'data_dir') if k not in given]
    for k in kept:
        setattr(c, k, config[k])
    if kept:
        print(f"{c.init_from}: its run's {' and '.join(f'--{k} {config[k]}' for k in kept)} "
              f"(give the flag for other data)")
    if c.stage != 'eval' and config.get('freeze', 'none') != 'none':
        now = 'kept frozen' if c.freeze == config['freeze'] else f"--freeze {c.freeze} now"
        print(f"{c.init_from}: its {config['stage']} stage froze {config['freeze']}; {now}")


def threads_of_run(ran, now):
    """Says whether a resume sums as its run did: the same CPU thread count, or not."""
    if not ran or ran == now:
        print(f"resuming on {now} CPU thread{'s' * (now > 1)}, as the run did (bit for bit)")
    else:
        print(f"the run trained on {ran} CPU threads, this resume has {now} (OMP_NUM_THREADS): "
              f"sums are ordered otherwise, so it resumes close to, not bit for bit with, the run")


def check_data(c, ckpt, resuming, d):
    """A resume needs exactly the run's data (its fingerprint), --stage eval the classes its head
    learned."""
    if resuming and d['fingerprint'] != ckpt['data']:
        differ = [k for k, v in ckpt['data'].items() if d['fingerprint'][k] != v]
        raise UserError(f"{c.dataset} at {c.data_dir} is not the data {c.out_dir} trained on: "
                        f"its {', '.join(differ)} differ")
    if c.stage == 'eval' and d['classes'] != ckpt['data']['classes']:
        raise UserError(f"{c.init_from} classifies {len(ckpt['data']['classes'])} classes "
                        f"({', '.join(ckpt['data']['classes'][:4])}...), {c.dataset} at "
                        f"{c.data_dir} has {len(d['classes'])} ({', '.join(d['classes'][:4])}...)")


# ----------------------------------------------------------------- the weights a run starts from
def start_model(c, ckpt, resuming, classes):
    """The network a run starts from (on the CPU), and the record that analysis.py checks a rebuild
    of it against. A checkpoint keeps its head for the classes it learned, unless --reinit_head."""
    if resuming:
        print(f"resuming the run in {c.out_dir} at step {ckpt['iter']}")
        net = init_model(c.out_dir, c.seed, {}, source=ckpt, new_head=False)
        return net, ckpt['start']
    image = dict(vocab_size=0, n_classes=len(classes), img_size=c.img_size,
                 patch_size=c.patch_size, dropout=c.dropout)
    exported = export_config(c.init_from) or {}  # {} unless init_from is an export of export.py
    trained_on = ckpt['data']['classes'] if ckpt else exported.get('classes')
    new_head = (c.reinit_head or trained_on != classes) and c.stage != 'eval'
    net = init_model(c.init_from, c.seed, image, c.model, ckpt, new_head)
    mc = net.config
    shape = f"{mc.n_layer} layers x {mc.n_embd} wide, {mc.n_head} head{'s' * (mc.n_head > 1)}"
    if c.init_from == 'scratch':
        print(f"scratch: GPT-2 {shape} ({c.model}), GPT-2's random init")
    elif c.stage == 'finetune' and trained_on is None:
        print(f"finetune: from {c.init_from}'s language weights, without a bridge stage (to "
              f"fine-tune a bridged network, give --init_from out/bridge/ckpt.pt)")
    elif ckpt:
        print(f"loaded {c.init_from}: step {ckpt['iter']} of a {ckpt['config']['stage']} run; "
              f"{shape}; {mc.img_size}px images in {mc.patch_size}px patches"
              + f"; a new head for {len(classes)} classes" * new_head)
    if c.stage == 'eval':
        return net, None
    return net, dict(weights=weights_hash(net), new_head=new_head)


def init_model(init_from, seed, image, model=None, source=None, new_head=True):
    """The network a run starts from: the same arguments, the same weights bit for bit (analysis.py
    rebuilds a run's step 0 so). init_from 'scratch': GPT-2's init of the architecture `model`; an
    OpenAI name or HF checkpoint: its weights; source: a checkpoint of bridge.py's (its head kept
    unless new_head). What the source lacks is drawn from seed. image: GPTConfig's image fields."""
    torch.manual_seed(seed)
    if init_from == 'scratch':
        return GPT(GPTConfig(**{**architecture(model), **image}))
    if source is None:
        return GPT.from_pretrained(init_from, keep_head=not new_head, **image)
    net = GPT(GPTConfig(**{**source['model_config'], **image}))
    state = {k: v for k, v in source['model'].items() if not (new_head and k.startswith('head.'))}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # 'size mismatch for KEY: ...', a line per tensor
        raise UserError(f"{init_from} does not fit: {str(e).splitlines()[1].strip()}") from None
    check_keys(f"{init_from} does not fit", missing=set(missing) - {'head.weight', 'head.bias'},
               unexpected=unexpected)
    return net


def weights_hash(net):
    """A fingerprint of every tensor's bytes: the same weights, bit for bit, or not."""
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def load_run(src, device):
    """A ckpt.pt -> (its model, its run config, the checkpoint); a run directory -> (the model that
    run started from, its config, its checkpoint). The model is in eval mode on device."""
    if os.path.isdir(src):
        net, ckpt = start_of(src)
    else:
        if not os.path.isfile(src):
            raise UserError(f"'{src}' is neither a ckpt.pt of bridge.py nor a run directory")
        if src.endswith(('.jsonl', '.json')):
            raise UserError(f"{src} is a run's {os.path.basename(src)}, not its weights: give its "
                            f"ckpt.pt, or its run directory for the weights it started from")
        ckpt = read_checkpoint(src)
        net = init_model(src, ckpt['config']['seed'], {}, source=ckpt, new_head=False)
        print(f"{src}: step {ckpt['iter']} of a {ckpt['config']['stage']} run")
    return net.to(device).eval(), SimpleNamespace(**ckpt['config']), ckpt


def start_of(run_dir):
    """The weights a run started from, rebuilt as bridge.py built them (init_model) and
    checked against the fingerprint in the run's checkpoint -> (model, that checkpoint)."""
    path = os.path.join(run_dir, 'ckpt.pt')
    if not os.path.isfile(path):
        raise UserError(f"{run_dir} is not a bridge.py run directory: it has no ckpt.pt")
    ckpt = read_checkpoint(path)
    c, mc, start = ckpt['config'], ckpt['model_config'], ckpt['start']
    image = dict(mc)  # the whole config: what the rebuild's source lacks, it takes from it
    source = read_checkpoint(c['init_from']) if c['init_from'].endswith(('.pt', '.pth')) else None
    net = init_model(c['init_from'], c['seed'], image, c['model'], source, start['new_head'])
    if weights_hash(net) != start['weights']:
        raise UserError(f"cannot rebuild the weights {run_dir} started from: {c['init_from']} has "
                        f"changed since (resumed or replaced); give a copy of it as it was instead")
    print(f"{run_dir}: the run's weights at step 0, rebuilt from {c['init_from']} and checked")
    return net, ckpt


# ----------------------------------------------------------------- writing a run's folder
def resume_state(c, opt, scaler, ckpt):
    """-> (step, metrics so far): a resumed run's, its optimizer state loaded; (0, []) for a new
    run."""
    if ckpt is None:
        return 0, []
    opt.load_state_dict(ckpt['optimizer'])
    if ckpt['scaler']:  # empty unless the run trained in float16
        scaler.load_state_dict(ckpt['scaler'])
    return ckpt['iter'], ckpt['history']


def save(c, env, metrics, history, state):
    """A checkpoint, only of finite losses: ckpt.pt holds all a resume needs (state: the model,
    optimizer, scaler, labels, the start and data fingerprints); metrics.jsonl and config.json are
    rewritten from it. Each goes to a temporary file, then is renamed: a kill never breaks one."""
    for k in ('train_loss', 'test_loss'):
        if not math.isfinite(metrics[k]):
            diverged(c, metrics['iter'], f"{k.replace('_', ' ')} {metrics[k]}", history)
    if env.rank == 0:
        raw = state['model']
        ckpt = dict(state, model=raw.state_dict(), model_config=asdict(raw.config),
                    config=vars(c), optimizer=state['optimizer'].state_dict(),
                    scaler=state['scaler'].state_dict(), train_labels=state['train_labels'].cpu(),
                    iter=metrics['iter'], history=history + [metrics],
                    elapsed_s=metrics['elapsed_s'], world=env.world, threads=env.threads)
        write_run(c, ckpt, history)
    history.append(metrics)
    print(f"eval step {metrics['iter']}: train loss {metrics['train_loss']:.4f} acc "
          f"{metrics['train_acc']:.1%} (the mean over the steps since the last evaluation, on the "
          f"labels trained on) | test loss "
          f"{metrics['test_loss']:.4f} acc {metrics['test_acc']:.2%} | saved {c.out_dir}/ckpt.pt")


def write_run(c, ckpt, history):
    """ckpt.pt, then metrics.jsonl and config.json rewritten from it. A write that fails (a full
    disk, a folder gone read-only) is one line; its temporary file goes, the last checkpoint
    stays."""
    rows = ''.join(to_json(m) + '\n' for m in ckpt['history'])
    run_config = to_json({**vars(c), 'model_config': ckpt['model_config']}, indent=1)
    writes = {'ckpt.pt': (lambda f: torch.save(ckpt, f), 'wb'),
              'metrics.jsonl': (lambda f: f.write(rows), 'w'),
              'config.json': (lambda f: f.write(run_config), 'w')}
    kept = last_kept(history)
    for name, (write, mode) in writes.items():
        path = os.path.join(c.out_dir, name)
        try:
            atomic(path, write, mode)
        except (OSError, RuntimeError) as e:  # torch.save says RuntimeError for a failed write
            with contextlib.suppress(OSError):
                os.remove(path + '.tmp')
            cause = e if isinstance(e, OSError) else e.__context__  # torch wraps the OSError
            why = cause.strerror if isinstance(cause, OSError) else str(e).splitlines()[0]
            raise UserError(f"cannot write {path} at step {ckpt['iter']} ({why}): stopped; "
                            f"{kept}") from None
        kept = f"ckpt.pt keeps step {ckpt['iter']}"


def atomic(path, write, mode='w'):
    """write(file) into path.tmp, then rename that over path."""
    with open(path + '.tmp', mode) as f:
        write(f)
    os.replace(path + '.tmp', path)


def diverged(c, it, what, history):
    """Stops a run whose loss is not finite; ckpt.pt stays the last good checkpoint."""
    hint = " or --dtype bfloat16" if c.dtype == 'float16' else ''
    raise UserError(f"{what} at step {it}: stopped; in {c.out_dir}, {last_kept(history)}; try a "
                    f"lower --lr{hint}")


def last_kept(history):
    """What ckpt.pt holds, said when a run stops without writing another."""
    return f"ckpt.pt keeps step {history[-1]['iter']}" if history else "no checkpoint was written"
