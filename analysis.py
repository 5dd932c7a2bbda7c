"""
The paper's figures and Theorem 4.1, one subcommand each; each writes OUT.png and OUT.json.

  python analysis.py outliers gpt2-medium out/bridge/ckpt.pt [vit.safetensors]  # Fig. 2: outliers
  python analysis.py curves out/noise0 out/noise15 out/noise30 out/noise100     # Fig. 3: accuracy
  python analysis.py landscape out/bridge                                        # Fig. 4: landscape
  python analysis.py tsne out/bridge out/bridge/ckpt.pt                          # Fig. 5: t-SNE
  python analysis.py alignment out/bridge out/bridge/ckpt.pt                     # Theorem 4.1
  python analysis.py probe gpt2-medium out/bridge/ckpt.pt scratch               # layer-wise probe
  python analysis.py compare out/lab/scratch out/lab/gpt2 out/lab/gpt2_bridge ...  # lab.sh's arms

A source is a ckpt.pt written by bridge.py, or a run directory (out/bridge), which stands for the
weights that run STARTED from: rebuilt as bridge.py built them, and checked against the fingerprint
its checkpoint keeps. `outliers` also takes GPT-2 names, Hugging Face checkpoints and any state-dict
file (a vision model to compare with); `probe` also GPT-2 names, Hugging Face checkpoints and
`scratch`. Needs matplotlib and scikit-learn.
"""
import difflib
import json
import math
import os
import re
import tempfile
import textwrap
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bridge import load_checkpoint, same_start, start_model
from configurator import UserError, parse, pick_device, run_cli, to_json
from data import DATASETS, augment, balanced_subset, load_dataset, take
from model import GPT, IGNORED, OFFICIAL, GPTConfig, architecture, read_weights

out = ''             # output prefix: OUT.png and OUT.json; '': analysis/<subcommand>
device = 'auto'      # auto, cuda, cuda:N, cpu or mps
dataset = ''         # the images; '': the run's own (probe: the first run's, else cifar10)
data_dir = ''        # '': the run's own data_dir
split = 'test'       # test: true labels | train: (landscape) the labels trained on; tsne too
batch_size = 64      # images per forward pass
threshold = 1.0      # outliers: |w| > threshold (the paper's code: 1.0)
k_std = 6.0          # outliers, relative: more than k_std std from the mean of their own tensor
grid = 11            # landscape: points per axis; alpha and beta in linspace(-span, span, grid)
span = 1.0           # landscape: alpha = -1 is the start of training, alpha = 0 its end
batches = 2          # landscape: batches per loss value
images = 0           # a seeded class-balanced sample: tsne, alignment (0: 500); probe (0: all)
top_k = 8            # alignment: leading eigenvectors compared
seed = 0             # landscape's direction, t-SNE, samples; probe: new weights, held-out split
model = 'gpt2-medium'  # probe: the architecture of a `scratch` source (an OpenAI size or LxW)
img_size = 0         # probe: the image side of sources without one; 0: the first run's, else 224
patch_size = 0       # probe: their patch side; 0: the first run's, else 16

CHOICES = dict(dataset=('', *DATASETS), split=('test', 'train'))
RANGES = {k: (1, math.inf) for k in ('batch_size', 'grid', 'span', 'batches', 'top_k')}
L2 = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # probe: the L2 strengths tried, strongest first
POOLS = {'last': ('-', 'last token'), 'mean': (':', 'mean over tokens')}  # probe: line, name


def pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import sklearn  # noqa: F401  (tsne needs it: better to know before a long run)
    except ImportError as e:
        raise UserError(f"analysis.py draws with matplotlib and uses scikit-learn ({e.name} is "
                        f"missing): pip install matplotlib scikit-learn") from None
    plt.rcParams.update({'font.size': 10, 'legend.fontsize': 8})
    return plt


def out_prefix(f, name):
    """OUT (--out, else analysis/<subcommand>), its folder created now, before the work."""
    prefix = f.out or os.path.join('analysis', name)
    try:
        os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {prefix}: cannot create its folder ({e.strerror})") from None
    if os.path.isdir(prefix + '.png') or os.path.isdir(prefix + '.json'):
        raise UserError(f"--out {prefix}: {prefix}.png or .json is a folder")
    try:  # a read-only mount: known now, not after the work
        with tempfile.TemporaryFile(dir=os.path.dirname(prefix) or '.'):
            pass
    except OSError as e:
        raise UserError(f"--out {prefix}: cannot write into its folder ({e.strerror})") from None
    return prefix


def save(f, name, fig, result):
    """Write OUT.png and OUT.json (the numbers behind the figure; null where not finite)."""
    prefix = out_prefix(f, name)
    fig.savefig(prefix + '.png', dpi=110, bbox_inches='tight')
    with open(prefix + '.json', 'w') as fh:
        fh.write(to_json(result, indent=1))
    pyplot().close(fig)  # a figure stays in pyplot's memory until closed
    print(f"wrote {prefix}.png and {prefix}.json")


def name_of(src):
    """A source's label in figures: what a run trained on, and whether this is its start (a run
    directory) or its checkpoint: 'noise1.0: scratch, 100% random labels (start)'. Anything else
    (gpt2-medium, a state-dict file) by its name."""
    src = src.rstrip('/')
    run_dir = src if os.path.isdir(src) else os.path.dirname(src)
    c = read_config(os.path.join(run_dir, 'config.json')) if run_dir else {}
    if not c or not (os.path.isdir(src) or src.endswith(('.pt', '.pth'))):
        return os.path.basename(src) or src
    return f"{run_label(run_dir, c)} ({'start' if os.path.isdir(src) else 'trained'})"


def run_images(c, f, device):
    """The dataset of run config c (or of --dataset/--data_dir), on the device."""
    return load_dataset(f.dataset or c.dataset, f.data_dir or c.data_dir, c.img_size, device,
                        c.num_workers)


def sample_size(f):
    """--images for tsne and alignment: 500 unless given (0 is probe's whole training split)."""
    return f.images or 500


def images_for(net, d, split, n, seed):
    """n images of a split, as many of each class as can be (a seeded choice within each class),
    as the model sees them (resized, normalized) -> (images, true labels, their indices)."""
    x, y = d[split][0], d[split][1]
    if not isinstance(x, torch.Tensor):
        raise UserError("analysis.py needs the images in memory: this dataset is too large")
    idx = balanced_subset(y, n, seed).to(y.device)
    return augment(x[idx], 'eval', net.config.img_size, d['mean'], d['std']), y[idx], idx


def load_run(src, device):
    """A ckpt.pt -> (its model, its run's config, the checkpoint); a run directory -> (the model
    that run started from, rebuilt as bridge.py built it, its config, its checkpoint). The model
    is in eval mode on device."""
    if src.endswith(('.jsonl', '.json')):
        raise UserError(f"{src} is a run's {os.path.basename(src)}, not its weights: give its "
                        f"ckpt.pt, or its run directory for the weights it started from")
    if not os.path.isdir(src):
        ckpt = load_checkpoint(src)
        net = GPT(GPTConfig(**ckpt['model_config']))
        net.load_state_dict(ckpt['model'])
        print(f"{src}: step {ckpt['iter']} of a {ckpt['config']['stage']} run")
        return net.to(device).eval(), SimpleNamespace(**ckpt['config']), ckpt
    if not os.path.isfile(os.path.join(src, 'ckpt.pt')):
        raise UserError(f"{src} is not a bridge.py run directory: it has no ckpt.pt")
    ckpt = load_checkpoint(os.path.join(src, 'ckpt.pt'))
    c = SimpleNamespace(**ckpt['config'])
    if c.init_from.endswith(('.pt', '.pth')) and not os.path.isfile(c.init_from):
        raise UserError(f"{src} started from {c.init_from}, which is not there any more")
    source = same_start(ckpt['config'], ckpt['start'], src)  # the checkpoint as it was, or refused
    net = start_model(c, ckpt['data']['classes'], source)[0]
    print(f"{src}: the run's weights at step 0, rebuilt from {c.init_from}")
    return net.to(device).eval(), c, ckpt


def hidden_states(net, images):
    """(B, 3, H, W) -> every layer's (B, T, C) tokens, for probes: the input of block 0 (patches +
    wpe), the output of each block, and after ln_f (what GPT.features pools), as GPT.body
    computes them: hooks on its modules, not a second copy of it."""
    t, states = net.transformer, []
    hooks = [m.register_forward_hook(lambda m, i, out: states.append(out))
             for m in (t.drop, *t.h, t.ln_f)]
    try:
        net.body(net.patch_tokens(images))
    finally:
        for hook in hooks:
            hook.remove()
    return states


# ----------------------------------------------------------------------------- Fig. 2: outliers
def state_dict_of(src):
    """Any model to count: a GPT-2 name or HF checkpoint, a ckpt.pt, a run, a state-dict file."""
    if os.path.isfile(os.path.join(src, 'ckpt.pt')):
        return load_run(src, 'cpu')[0].state_dict()
    if src in OFFICIAL or os.path.isdir(src):
        return GPT.from_pretrained(src).state_dict()
    if not os.path.isfile(src):
        raise UserError(f"no model '{src}': use a GPT-2 name, a checkpoint directory or file, "
                        f"a ckpt.pt or a run directory")
    weights = read_weights(src)
    weights = weights.get('model', weights) if isinstance(weights, dict) else weights
    if not (isinstance(weights, dict) and any(isinstance(v, torch.Tensor) for v in
                                              weights.values())):
        raise UserError(f"{src} holds no state dict of tensors to count (a "
                        f"{type(weights).__name__}{', empty' * (weights == {})})")
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}


def is_layernorm(name):
    module = name.rsplit('.', 2)[-2] if name.count('.') else name
    return module.startswith('ln') or 'norm' in module


def is_embedding(name):
    return any(s in name for s in ('wte', 'wpe', 'embed', 'position', 'cls_token', 'patch'))


def count_outliers(sd, f):
    """Weights with |w| > threshold (absolute, the paper's code) and more than k_std standard
    deviations from their own tensor's mean (relative): overall, without LayerNorm/embeddings,
    per block."""
    absolute = {k: v.abs() > f.threshold for k, v in sd.items()}
    # a z-score: for zero-mean matrices it is |w| > k_std * std; LayerNorm gains centre on 1, not 0
    relative = {k: (v - v.mean()).abs() > f.k_std * v.std() if v.numel() > 1 else v.abs() < 0
                for k, v in sd.items()}  # a single number has no spread: never an outlier

    def count(names):
        n = sum(sd[k].numel() for k in names)
        a = sum(int(absolute[k].sum()) for k in names)
        r = sum(int(relative[k].sum()) for k in names)
        return dict(params=n, outliers=a, ratio=a / max(n, 1), relative_outliers=r,
                    relative_ratio=r / max(n, 1))
    blocks = {}
    for k in sd:
        if m := re.search(r'(?:^|\.)(?:h|layer|layers|blocks)\.(\d+)\.', k):
            blocks.setdefault(int(m.group(1)), []).append(k)
    core = [k for k in sd if not is_layernorm(k) and not is_embedding(k)]
    per_block = [dict(block=b, **count(names)) for b, names in sorted(blocks.items())]
    return dict(all=count(list(sd)), without_layernorm_and_embeddings=count(core),
                per_block=per_block), torch.cat(list(absolute.values()))


def outliers(sources, f):
    """Fig. 2: weight values against their index, the outliers red; the distribution of |w|."""
    plt = pyplot()
    cols = min(3, math.ceil(math.sqrt(len(sources) + 1)))  # the sources, then a histogram
    rows = math.ceil((len(sources) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False,
                             layout='constrained')
    axes = axes.flatten()
    result = {'threshold': f.threshold, 'k_std': f.k_std, 'models': {}}
    for ax, src in zip(axes, sources):
        sd = {k: v.detach().float().flatten() for k, v in state_dict_of(src).items()
              if v.is_floating_point() and not IGNORED.search(k)}
        r, is_out = count_outliers(sd, f)
        result['models'][src] = r
        core = r['without_layernorm_and_embeddings']
        print(f"{src}: {r['all']['outliers']:,} of {r['all']['params']:,} weights beyond "
              f"+-{f.threshold:g} ({r['all']['ratio']:.4%}); without LayerNorm/embeddings "
              f"{core['ratio']:.4%}; beyond {f.k_std:g} std: {r['all']['relative_ratio']:.4%}")
        values = torch.cat(list(sd.values()))
        stride = max(1, len(values) // 200_000)  # the line is subsampled; every outlier is drawn
        ax.plot(torch.arange(0, len(values), stride).numpy(), values[::stride].numpy(),
                color='0.6', lw=0.3)
        idx = is_out.nonzero().flatten()
        ax.scatter(idx.numpy(), values[idx].numpy(), s=8, color='red', zorder=3)
        for y in (f.threshold, -f.threshold):
            ax.axhline(y, ls='--', color='k', lw=0.8)
        lim = 1.1 * max(values.abs().max().item(), 1.5 * f.threshold)  # the weights, no empty band
        ax.set(ylim=(-lim, lim), title=name_of(src), xlabel='parameter index',
               ylabel='weight value')
        ax.text(0.02, 0.95, f"outliers: {r['all']['outliers']:,} ({r['all']['ratio']:.3%})",
                transform=ax.transAxes, va='top')
        hist = axes[len(sources)]
        hist.hist(values[values != 0].abs().log10().numpy(), bins=100, histtype='step',
                  density=True, label=name_of(src))
    hist.axvline(torch.tensor(f.threshold).log10().item(), ls='--', color='k', lw=0.8)
    hist.set(yscale='log', xlabel='log10 |w|  (w != 0)', title='distribution of |w|')
    hist.legend(loc='upper left', bbox_to_anchor=(1.02, 1), fontsize=7)  # off the bars
    for ax in axes[len(sources) + 1:]:
        ax.axis('off')
    save(f, 'outliers', fig, result)
    return result


# ----------------------------------------------------------------------------- Fig. 3: curves
def run_label(run, c):
    init = c.get('init_from', '?')
    if init not in OFFICIAL and init != 'scratch':
        init = f"from {os.path.basename(os.path.dirname(init)) or init}"
    fraction = c.get('random_label_fraction', 1.0) if c.get('stage') == 'bridge' else 0.0
    freeze = f", freeze {c['freeze']}" if c.get('freeze', 'none') != 'none' else ''
    return f"{os.path.basename(run.rstrip('/'))}: {init}, {fraction:.0%} random labels{freeze}"


def read_metrics(path):
    """metrics.jsonl -> its rows; a missing, empty or damaged file is a one-line error."""
    if not os.path.isfile(path):
        raise UserError(f"no metrics at {path}: give run directories (or their metrics.jsonl)")
    rows, keys = [], {'iter', 'epoch', 'train_acc', 'test_acc'}
    with open(path, 'rb') as fh:
        for i, line in enumerate(fh, 1):
            try:
                rows.append(json.loads(line))
            except ValueError:  # not JSON, or not UTF-8 (a ckpt.pt, say)
                raise UserError(f"{path}, line {i}: not a JSON object (a damaged file?)") from None
            if not (isinstance(rows[-1], dict) and keys <= rows[-1].keys()):
                raise UserError(f"{path}, line {i}: not an evaluation of bridge.py (expected "
                                f"{', '.join(sorted(keys))})")
            odd = [k for k in sorted(keys) if not is_number(rows[-1][k])]
            if odd:
                raise UserError(f"{path}, line {i}: {odd[0]} is {rows[-1][odd[0]]!r}, not a number")
            if not all(0 <= rows[-1][k] <= 1 for k in ('train_acc', 'test_acc')):
                raise UserError(f"{path}, line {i}: an accuracy outside [0, 1] (bridge.py writes "
                                f"fractions: 0.57, not 57)")
    if not rows:
        raise UserError(f"{path} holds no evaluations yet")
    return rows


def is_number(x):
    """A finite int or float of JSON (not a string, null or true)."""
    return type(x) in (int, float) and math.isfinite(x)


def finite(features, what):
    """features, if every one is finite; else a one-line error (a diverged network's NaNs would
    fail deep inside L-BFGS or t-SNE)."""
    if not torch.isfinite(features).all():
        raise UserError(f"{what}: its features are not finite (NaN or inf weights: a diverged "
                        f"run?); give a checkpoint of before it diverged")
    return features


def history_of(path):
    """A run's evaluations and flags -> (rows, config): from a metrics.jsonl and the config.json
    beside it, or from a ckpt.pt, which keeps both."""
    if path.endswith(('.pt', '.pth')):
        ckpt = load_checkpoint(path)
        return ckpt['history'], {**ckpt['config'], 'data': ckpt['data']}
    return read_metrics(path), read_config(os.path.join(os.path.dirname(path), 'config.json'))


def read_config(path):
    """A run's config.json -> dict; {} where there is none, a one-line error where it is bad."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, 'rb') as fh:
            c = json.load(fh)
    except ValueError:
        raise UserError(f"{path} is not JSON (a damaged file?)") from None
    if not isinstance(c, dict):
        raise UserError(f"{path} is not the config.json of a bridge.py run")
    return c


def curves(sources, f):
    """Fig. 3: train accuracy (on the labels trained on) and test accuracy against epochs."""
    plt = pyplot()
    fig, (ax_train, ax_test) = plt.subplots(1, 2, figsize=(11, 3.8))
    result = {}
    for src in sources:
        path = os.path.join(src, 'metrics.jsonl') if os.path.isdir(src) else src
        rows, c = history_of(path)
        label = run_label(os.path.dirname(path) or '.', c)
        epochs = [r['epoch'] for r in rows]
        ax_train.plot(epochs, [100 * r['train_acc'] for r in rows], marker='.', label=label)
        ax_test.plot(epochs, [100 * r['test_acc'] for r in rows], marker='.', label=label)
        result[src] = dict(label=label, epochs=epochs[-1], final_train_acc=rows[-1]['train_acc'],
                           final_test_acc=rows[-1]['test_acc'],
                           best_test_acc=max(r['test_acc'] for r in rows))
    ax_train.set(xlabel='epoch', ylabel='train accuracy (%), labels trained on', title='fitting')
    ax_test.set(xlabel='epoch', ylabel='test accuracy (%), true labels', title='generalization')
    ax_test.legend(fontsize=7)
    save(f, 'curves', fig, result)
    return result


# ----------------------------------------------------------------------------- Fig. 4: landscape
def directions(theta, theta0, f):
    """d1 = theta_T - theta_0 (so alpha = -1 is the start), d2 random, orthogonal to d1 and of d1's
    norm in every parameter tensor: both normalized layer by layer; frozen tensors stay put."""
    g = torch.Generator(f.device).manual_seed(f.seed)
    d1, d2 = {}, {}
    for k, t in theta.items():
        d1[k] = t - theta0[k].detach()
        r = torch.randn(t.shape, generator=g, device=f.device)
        norm = d1[k].norm()
        if norm > 0:
            r -= (r * d1[k]).sum() / norm ** 2 * d1[k]  # orthogonal to d1 in this tensor
        d2[k] = r * (norm / r.norm()) if norm > 0 else torch.zeros_like(r)
    return d1, d2


def landscape(sources, f):
    """Fig. 4: L(theta_T + alpha d1 + beta d2) around the end of training (see directions).
    Sources: a run directory; or a ckpt.pt (its folder holds the start); or start, then end."""
    plt = pyplot()
    if len(sources) not in (1, 2):
        raise UserError("landscape takes a run directory, or its ckpt.pt (after its start)")
    if f.grid < 2:
        raise UserError(f"--grid {f.grid}: a surface needs at least 2 points per axis")
    end = sources[-1]
    end = os.path.join(end, 'ckpt.pt') if os.path.isdir(end) else end
    start = sources[0] if len(sources) == 2 else os.path.dirname(os.path.abspath(end))
    net, c, ckpt = load_run(end, f.device)
    theta = {k: p.detach().clone() for k, p in net.named_parameters()}
    theta0 = dict(load_run(start, f.device)[0].named_parameters())
    if {k: v.shape for k, v in theta.items()} != {k: v.shape for k, v in theta0.items()}:
        raise UserError(f"{start} and {end} are not the same network")
    d1, d2 = directions(theta, theta0, f)
    x, y, idx = images_for(net, run_images(c, f, f.device), f.split, f.batches * f.batch_size,
                           f.seed)
    if f.split == 'train':
        y = ckpt['train_labels'].to(f.device)[idx]  # the objective the run optimized

    @torch.no_grad()
    def loss_at(alpha, beta):
        for k, p in net.named_parameters():
            p.copy_(theta[k] + alpha * d1[k] + beta * d2[k])
        return sum(F.cross_entropy(net(xb).float(), yb, reduction='sum').item()
                   for xb, yb in zip(x.split(f.batch_size), y.split(f.batch_size))) / len(y)
    axis = torch.linspace(-f.span, f.span, f.grid).tolist()
    surface = [[loss_at(a, b) for a in axis] for b in axis]  # rows: beta, columns: alpha
    result = dict(alphas=axis, betas=axis, loss=surface, loss_end=loss_at(0.0, 0.0),
                  loss_start=loss_at(-1.0, 0.0), split=f.split, images=len(y),
                  moved_tensors=sum(1 for v in d1.values() if v.abs().max() > 0))
    print(f"loss at the end of training {result['loss_end']:.4f}, at its start "
          f"{result['loss_start']:.4f} ({f.grid}x{f.grid} grid, {len(y)} {f.split} images)")
    draw_landscape(plt, axis, surface, f)
    save(f, 'landscape', plt.gcf(), result)
    return result


def draw_landscape(plt, axis, surface, f):
    fig = plt.figure(figsize=(11, 4.2))
    ax = fig.add_subplot(1, 2, 1)
    cs = ax.contourf(axis, axis, surface, levels=30, cmap='RdYlBu_r')
    fig.colorbar(cs, ax=ax, label=f"loss on the {f.split} split")
    fig.suptitle('loss landscape: L(theta_T + alpha d1 + beta d2), d1 = theta_T - theta_0')
    ax.plot([0], [0], 'k*', ms=10, label='end of training', clip_on=False, zorder=3)
    if -f.span <= -1:  # on the edge when --span is 1: drawn whole, not cut by the axes
        ax.plot([-1], [0], 'ko', ms=6, label='start', clip_on=False, zorder=3)
    ax.set(xlabel='alpha (along training, theta_T - theta_0)', ylabel='beta (random direction)')
    ax.legend()
    ax3 = fig.add_subplot(1, 2, 2, projection='3d')
    A, B = torch.meshgrid(torch.tensor(axis), torch.tensor(axis), indexing='xy')
    ax3.plot_surface(A.numpy(), B.numpy(), torch.tensor(surface).numpy(), cmap='RdYlBu_r')
    ax3.set(xlabel='alpha', ylabel='beta', zlabel='loss')


# ----------------------------------------------------------------------------- Fig. 5: t-SNE
def tsne(sources, f):
    """Fig. 5: pooled features (what the head sees) of the same images under each model, embedded
    by t-SNE and coloured by true class; silhouette and intra-class spread on the features."""
    plt = pyplot()
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources) + 1.5, 4), squeeze=False)
    result, d = {}, None
    for ax, src in zip(axes[0], sources):
        net, c, _ = load_run(src, f.device)
        d = d or run_images(c, f, f.device)
        if sample_size(f) < 2 * len(d['classes']):
            raise UserError(f"--images {sample_size(f)}: t-SNE and the silhouette need at least "
                            f"2 images of each of the {len(d['classes'])} classes")
        x, y, _ = images_for(net, d, f.split, sample_size(f), f.seed)
        with torch.no_grad():
            feats = torch.cat([net.features(xb) for xb in x.split(f.batch_size)]).float().cpu()
        finite(feats, src)
        y = y.cpu()
        centroids = torch.stack([feats[y == k].mean(0) for k in y.unique()])
        intra = (feats - centroids[torch.searchsorted(y.unique(), y)]).norm(dim=1).mean().item()
        spread = (feats - feats.mean(0)).norm(dim=1).mean().item()
        perplexity = min(30.0, (len(y) - 1) / 3)
        tsne = TSNE(2, perplexity=perplexity, init='pca', random_state=f.seed)
        emb = tsne.fit_transform(feats.numpy())
        silhouette = float(silhouette_score(feats.numpy(), y.numpy()))
        result[src] = dict(silhouette=silhouette, intra_class_distance=intra,
                           intra_over_total_spread=intra / spread, images=len(y))
        print(f"{src}: silhouette {result[src]['silhouette']:.3f}, intra-class distance / total "
              f"spread {result[src]['intra_over_total_spread']:.3f}")
        cmap = 'tab10' if len(d['classes']) <= 10 else 'tab20'
        dots = ax.scatter(emb[:, 0], emb[:, 1], c=y.numpy(), cmap=cmap, s=5, vmin=0,
                          vmax=max(9, len(d['classes']) - 1))
        title = textwrap.fill(name_of(src), 34)  # one panel's width: no title runs into the next
        ax.set(xticks=[], yticks=[])
        ax.set_title(f"{title}\nsilhouette {result[src]['silhouette']:.3f}", fontsize=9)
    handles = dots.legend_elements(num=list(y.unique().tolist()))[0]
    axes[0][-1].legend(handles, [d['classes'][k] for k in y.unique()], title='class',
                       loc='center left', bbox_to_anchor=(1.02, 0.5))
    save(f, 'tsne', fig, result)
    return result


# ----------------------------------------------------------------------------- Theorem 4.1
def patch_covariance(net, d, f):
    """Sigma_x: covariance of the (3*p*p)-vectors of training patches, as Conv2d sees them
    -> (Sigma_x, its eigenvalues and eigenvectors, largest first)."""
    x, _, _ = images_for(net, d, 'train', sample_size(f), f.seed)
    p = net.config.patch_size
    patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2).reshape(-1, 3 * p * p)
    sigma_x = torch.cov(patches.T.double())  # patches: (N*T, 3*p*p)
    evals, evecs = torch.linalg.eigh(sigma_x)
    return sigma_x, evals.flip(0), evecs.flip(1)


def alignment(sources, f):
    """Theorem 4.1: random-label training aligns the first layer's weight covariance Sigma_w =
    W^T W / C (C filters) with the input covariance Sigma_x. Reports their cosine
    <Sigma_w, Sigma_x> / (|Sigma_w| |Sigma_x|) and the overlap of their top_k eigenvectors
    (|U_w^T U_x|_F^2 / k: 1 = the same subspace, k/D = chance)."""
    plt = pyplot()
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(13, 4.2), width_ratios=(3, 2),
                                   layout='constrained')
    result, cache = {}, {}
    for i, src in enumerate(sources):
        net, c, _ = load_run(src, f.device)
        key = (f.dataset or c.dataset, f.data_dir or c.data_dir, c.img_size, c.patch_size)
        if key not in cache:
            cache[key] = patch_covariance(net, run_images(c, f, f.device), f)
            evals = cache[key][1]
            ax.plot(range(1, len(evals) + 1), (evals.cumsum(0) / evals.sum()).cpu().numpy(), 'k-',
                    lw=2.5, label='Sigma_x itself')
            ax.plot([0, len(evals)], [0, 1], color='0.6', ls='--', lw=1, label='isotropic Sigma_w')
        sigma_x, evals, ux = cache[key]
        w = net.patch.weight.detach().double().reshape(net.config.n_embd, -1)  # (C, 3*p*p)
        sigma_w = w.T @ w / w.size(0)
        cosine = ((sigma_w * sigma_x).sum() / (sigma_w.norm() * sigma_x.norm())).item()
        uw = torch.linalg.eigh(sigma_w)[1].flip(1)
        k = min(f.top_k, uw.size(1))
        overlap = ((uw[:, :k].T @ ux[:, :k]).norm() ** 2 / k).item()
        result[src] = dict(alignment=cosine, top_k_overlap=overlap, k=k,
                           chance_overlap=k / uw.size(1))
        print(to_json(dict(source=src, **result[src])))
        along = torch.diagonal(ux.T @ sigma_w @ ux)  # Sigma_w's variance along Sigma_x's axes
        ax.plot(range(1, len(along) + 1), (along.cumsum(0) / along.sum()).cpu().numpy(), lw=1.5,
                color=f"C{i}", label=f"Sigma_w of {name_of(src)}")
        bars.barh([name_of(src)], [cosine], color=f"C{i}")
        bars.text(min(cosine, 0.55), i, f" {cosine:.3f} (top-{k} overlap {overlap:.2f})",
                  va='center')
    ax.set(xlabel="k: the top-k eigenvectors of Sigma_x", ylabel='share of the variance in them',
           ylim=(0, 1.02), title='how much of Sigma_w lies along the main axes of Sigma_x')
    ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.15), fontsize=7)  # below, off the curves
    bars.set(xlim=(0, 1), xlabel='cosine(Sigma_w, Sigma_x), at most 1', title='alignment')
    bars.invert_yaxis()
    save(f, 'alignment', fig, result)
    return result


# ----------------------------------------------------------------------------- layer-wise probe
def probe(sources, f):
    """Which layers are a foundation for vision: every layer's features (the input of block 0, each
    block, ln_f; the last token and the mean over tokens) of the train and test splits, extracted
    once with the evaluation transform, then a multinomial logistic regression on each, its L2
    strength chosen on a held-out tenth of the training split (DINOv2's log_regression)."""
    plt = pyplot()
    probe_sources(sources, f)  # every source is known before any image is read
    d, image = probe_data(sources, f)
    chance = 1 / len(d['classes'])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    result = dict(dataset=f.dataset or d['name'], classes=len(d['classes']), chance=chance,
                  sources={})
    for i, src in enumerate(sources):
        net, label = probe_net(src, image, f)
        feats = {split: layer_features(net, d, split, f) for split in ('train', 'test')}
        finite(feats['train']['last'][-1], src)  # NaN weights end in NaN features at ln_f
        names = ['input'] + [f"block {k}" for k in range(net.config.n_layer)] + ['ln_f']
        layers = result['sources'][src] = dict(label=label, layers=[])
        for k, name in enumerate(names):
            row = dict(layer=name, features=net.config.n_embd, train=len(d['train'][1]),
                       test=len(d['test'][1]))
            for pool in ('last', 'mean'):
                acc, l2 = fit_probe(feats['train'][pool][k], d['train'][1],
                                    feats['test'][pool][k], d['test'][1], len(d['classes']), f)
                row[pool] = dict(test_acc=acc, l2=l2)
            layers['layers'].append(row)
            print(f"{label} | {name}: last token {row['last']['test_acc']:.2%} (l2 "
                  f"{row['last']['l2']:g}), mean {row['mean']['test_acc']:.2%} (l2 "
                  f"{row['mean']['l2']:g})")
        shift = 0.06 * (i - (len(sources) - 1) / 2)  # side by side: equal lines stay visible
        for pool, (style, what) in POOLS.items():
            ax.plot([k + shift for k in range(len(names))],
                    [100 * r[pool]['test_acc'] for r in layers['layers']], style,
                    marker='os^Dv'[i % 5], mfc='none', ms=4, color=f"C{i}",
                    label=f"{label}, {what}")
    ax.axhline(100 * chance, color='0.5', ls='--', lw=1, label=f"chance ({chance:.0%})")
    ax.set(xlabel='layer: 0 = the input of block 0 (patches + wpe), L + 1 = after ln_f',
           ylabel='test accuracy (%), linear probe', ylim=(0, 100),
           title=f"linear probe of every layer, {result['dataset']}")
    ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5))
    save(f, 'probe', fig, result)
    return result


def probe_data(sources, f):
    """The one dataset every source is probed on: --dataset/--data_dir, else the first run's, else
    CIFAR-10 -> (the dataset on the device, the image fields of a language model's new parts)."""
    runs = [s for s in sources if is_run(s)]
    first = {}
    if runs:
        path = runs[0] if runs[0].endswith(('.pt', '.pth')) else os.path.join(runs[0], 'ckpt.pt')
        ckpt = load_checkpoint(path)
        first = dict(ckpt['config'], **ckpt['model_config'])
    name = f.dataset or first.get('dataset', 'cifar10')
    data_dir = f.data_dir or first.get('data_dir', 'data')
    img_size = f.img_size or first.get('img_size', 224)
    patch_size = f.patch_size or first.get('patch_size', 16)
    d = load_dataset(name, data_dir, img_size, f.device, min(8, os.cpu_count() or 1))
    if f.images:  # minutes instead of hours for OpenAI's GPT-2 on a CPU
        d = take(d, 'train', f.images, f.seed, '--images')
    if len(d['train'][1]) < 10:  # L-BFGS on 1 example: a std of NaN
        raise UserError(f"probe: {name} at {data_dir} has {len(d['train'][1])} training images; "
                        f"it needs at least 10 (a tenth is held out to choose the L2 strength)")
    image = dict(vocab_size=0, n_classes=len(d['classes']), img_size=img_size,
                 patch_size=patch_size, dropout=0.0)
    return dict(d, name=name), image


def probe_net(src, image, f):
    """A source -> (the network in eval mode on the device, its label). A run or its ckpt.pt as in
    the other subcommands; a GPT-2 name, Hugging Face checkpoint or `scratch` (--model) as
    bridge.py would start from it: a language model has no patch embedding, and gets bridge.py's
    seeded initialization of one (bridge.start_model, --seed)."""
    if is_run(src):
        return load_run(src, f.device)[0], name_of(src)
    c = SimpleNamespace(init_from=src, model=f.model, seed=f.seed, stage='probe', **image)
    net = start_model(c, [None] * image['n_classes'])[0]
    what = f"GPT-2's random init of {f.model}" if src == 'scratch' else "its language weights"
    print(f"{src}: {what}; no patch embedding, so bridge.py's seeded one (seed {f.seed}) at "
          f"{image['img_size']}px in {image['patch_size']}px patches")
    return net.to(f.device).eval(), f"{f.model} scratch" if src == 'scratch' else src


def probe_sources(sources, f):
    """The sources that probe cannot use, all named in one line before any work."""
    if 'scratch' in sources:
        architecture(f.model)
    bad = [s for s in sources if s != 'scratch' and s not in OFFICIAL and not os.path.exists(s)]
    if bad:
        raise UserError(f"probe: no source {', '.join(repr(s) for s in bad)}: use ckpt.pt files, "
                        f"run directories, {', '.join(OFFICIAL)}, Hugging Face checkpoints or "
                        f"scratch (--model)")


def is_run(src):
    """A ckpt.pt of bridge.py, or a run directory that holds one."""
    return src.endswith(('.pt', '.pth')) or os.path.isfile(os.path.join(src, 'ckpt.pt'))


@torch.no_grad()
def layer_features(net, d, split, f):
    """A split through the network once (evaluation transform, bf16 on CUDA) -> {'last': [(N, C)
    per layer], 'mean': [...]}, float32, on the device while they fit in a quarter of its memory."""
    x, _ = d[split]
    if not isinstance(x, torch.Tensor):
        raise UserError("probe needs the images in memory: this dataset is too large")
    layers = net.config.n_layer + 2
    where = f.device if probe_fits(f.device, 2 * layers * len(x) * net.config.n_embd * 4) else 'cpu'
    feats = {'last': [[] for _ in range(layers)], 'mean': [[] for _ in range(layers)]}
    ctx = torch.autocast('cuda', dtype=torch.bfloat16, enabled=f.device.type == 'cuda')
    start = time.time()
    for batch in x.split(f.batch_size):
        with ctx:
            states = hidden_states(net, augment(batch, 'eval', net.config.img_size, d['mean'],
                                                d['std']))
        for k, h in enumerate(states):  # (B, T, C) -> (B, C), pooled two ways
            feats['last'][k].append(h[:, -1].float().to(where))
            feats['mean'][k].append(h.float().mean(1).to(where))
    print(f"{split}: {len(x)} images through {layers} layers at "
          f"{len(x) / max(time.time() - start, 1e-9):.0f} images/s, features on {where}")
    return {pool: [torch.cat(parts) for parts in per_layer] for pool, per_layer in feats.items()}


def probe_fits(device, nbytes):
    """Whether nbytes of features fit in a quarter of the device's free memory."""
    if device.type == 'cuda':
        return nbytes < torch.cuda.mem_get_info(device)[0] / 4
    return device.type == 'cpu' or nbytes < 2 ** 30


def fit_probe(x_train, y_train, x_test, y_test, n_classes, f):
    """-> (test accuracy, the L2 strength): chosen on a seeded tenth of the training split held
    out (warm-started from the strongest), then refit on all of it."""
    y_train, y_test = y_train.to(x_train.device), y_test.to(x_train.device)
    held = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(f.seed))
    held = held[:max(1, len(y_train) // 10)].to(x_train.device)
    fit = torch.ones(len(y_train), dtype=torch.bool, device=x_train.device)
    fit[held] = False
    x_fit, y_fit, x_held, y_held = x_train[fit], y_train[fit], x_train[held], y_train[held]
    best, w = (-1.0, None), None
    for l2 in L2:  # the splits are copied once, not once a strength
        w = logistic_regression(x_fit, y_fit, n_classes, l2, w)
        best = max(best, (accuracy(w, x_held, y_held), l2))
    w = logistic_regression(x_train, y_train, n_classes, best[1])
    return accuracy(w, x_test, y_test), best[1]


def logistic_regression(x, y, n_classes, l2, init=None, steps=100):
    """A multinomial logistic regression on standardized x (x's own mean and std): argmin over
    (W, b) of mean cross-entropy + l2 / 2 |W|^2 (b unpenalized; scikit-learn's C = 1 / (l2 N)),
    by full-batch L-BFGS -> (W, b, mean, std)."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    W = torch.zeros(x.size(1), n_classes, device=x.device) if init is None else init[0].clone()
    b = torch.zeros(n_classes, device=x.device) if init is None else init[1].clone()
    W.requires_grad_(), b.requires_grad_()
    opt = torch.optim.LBFGS([W, b], max_iter=steps, history_size=20, line_search_fn='strong_wolfe',
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ W + b, y) + 0.5 * l2 * W.square().sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach(), mean, std


def accuracy(w, x, y):
    """The accuracy on (x, y) of a fit w of logistic_regression (standardized as it was)."""
    W, b, mean, std = w
    return ((((x - mean) / std) @ W + b).argmax(1) == y).float().mean().item()


# ----------------------------------------------------------------------------- the comparison
def compare(sources, f):
    """The paper's comparison (lab.sh): each arm's final test accuracy against the first source's
    (scratch), with a verdict. An arm beats it, or is worse, when the difference exceeds the test
    set's noise: two standard errors of a difference of two accuracies on n test images,
    2 sqrt(p q / n + p0 q0 / n). Arms on other data, classes or test images are refused."""
    plt = pyplot()
    rows = arms(sources)
    base, n = rows[0], rows[0]['test_images']
    chance = 1 / len(base['classes'])
    print(f"| arm | what | steps | test accuracy | vs {base['arm']} | verdict |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['label']} | {r['steps']} | {r['test_acc']:.2%} | "
              f"{100 * r['gain']:+.1f} points | {r['verdict']} |")
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 3, 4))
    ax.bar(range(len(rows)), [100 * r['test_acc'] for r in rows],
           color=[f"C{i}" for i in range(len(rows))])
    for i, r in enumerate(rows):
        ax.text(i, 100 * r['test_acc'] + 1, f"{100 * r['test_acc']:.1f}%", ha='center', fontsize=8)
    band = 100 * noise(base['test_acc'], base['test_acc'], n)
    ax.axhspan(100 * base['test_acc'] - band, 100 * base['test_acc'] + band, color='0.85', zorder=0,
               label=f"within noise of {base['arm']} (2 standard errors, {n} test images)")
    ax.axhline(100 * chance, color='k', ls=':', lw=1, label=f"chance ({chance:.1%})")
    ax.set_xticks(range(len(rows)), [r['arm'] for r in rows], rotation=20, fontsize=8)
    ax.set(ylabel='test accuracy (%), true labels', ylim=(0, 105),
           title=f"one fine-tune budget per arm, {base['dataset']}")
    ax.legend(fontsize=7, loc='upper left')
    result = dict(arms=rows, baseline=base['arm'], chance=chance, test_images=n)
    save(f, 'compare', fig, result)
    return result


def noise(p, p0, n):
    """Two standard errors of the difference of two accuracies p and p0, each on n images; at
    least one image's worth (1 / n), so that 0% and 100% still have a resolution."""
    return max(2 * math.sqrt((p * (1 - p) + p0 * (1 - p0)) / n), 1 / n)


def arm_label(c, seen=()):
    """What an arm was: 'gpt2 -> bridge (0-5 frozen) -> finetune', from its config and, for a
    fine-tune of a bridge run, that run's config.json."""
    init = str(c.get('init_from'))
    if not init.endswith(('.pt', '.pth')) or init in seen:
        start = f"scratch {c.get('model', '')}" if init == 'scratch' else os.path.basename(init)
        return f"{start} -> {c.get('stage', '?')}"
    b = read_config(os.path.join(os.path.dirname(init), 'config.json'))
    frozen = f" ({b['freeze']} frozen)" if b.get('freeze', 'none') != 'none' else ''
    return f"{arm_label(b, (*seen, init))}{frozen} -> {c.get('stage', '?')}"


def arms(sources):
    """Run directories -> a row each: its name, what it was, its steps, its final test accuracy,
    its gain over the first and a verdict. Refuses arms that were evaluated on other data."""
    rows = []
    for src in sources:
        path = os.path.join(src, 'metrics.jsonl') if os.path.isdir(src) else src
        history, c = history_of(path)
        data = c.get('data', {})
        rows.append(dict(arm=os.path.basename(src.rstrip('/')), label=arm_label(c),
                         dataset=c.get('dataset'), classes=data.get('classes', []),
                         test_set=(c.get('dataset'), data.get('files'), c.get('test_subset'),
                                   c.get('seed') if c.get('test_subset') else None),
                         test_images=history[-1].get('test_images') or data.get('test') or 1,
                         steps=history[-1]['iter'], test_acc=history[-1]['test_acc']))
    base = rows[0]
    for key, what in (('classes', 'classes'), ('test_set', 'test images (--dataset, the data, '
                                                           '--test_subset and its --seed)')):
        other = [r['arm'] for r in rows if r[key] != base[key]]
        if other or not base['classes']:
            raise UserError(f"compare: {', '.join(other) or base['arm']} did not evaluate on the "
                            f"{what} of {base['arm']}: their accuracies are not comparable")
    steps = [str(r['steps']) for r in rows]
    if len(set(steps)) > 1:
        print(f"warning: the arms ran different numbers of steps ({', '.join(steps)}): not one "
              f"budget")
    for r in rows:
        r['gain'] = r['test_acc'] - base['test_acc']
        margin = noise(r['test_acc'], base['test_acc'], base['test_images'])
        r['verdict'] = ('the baseline' if r is base else
                        f"beats {base['arm']} (noise +-{100 * margin:.1f})" if r['gain'] > margin
                        else f"worse than {base['arm']}" if r['gain'] < -margin
                        else f"within noise of {base['arm']} (+-{100 * margin:.1f})")
    return rows


SUBCOMMANDS = dict(outliers=outliers, curves=curves, landscape=landscape, tsne=tsne,
                   alignment=alignment, probe=probe, compare=compare)


def main(argv):
    if '--help' in argv or '-h' in argv:
        parse(['--help'], globals())
    if not argv or argv[0] not in SUBCOMMANDS:
        close = difflib.get_close_matches(argv[0], SUBCOMMANDS, n=1) if argv else []
        unknown = f"; unknown subcommand '{argv[0]}'" if argv else ''
        unknown += f" (did you mean {close[0]}?)" if close else ''
        raise UserError(f"usage: python analysis.py {{{','.join(SUBCOMMANDS)}}} SOURCE [SOURCE "
                        f"...] [--flag value ...] (--help lists the flags){unknown}")
    first_flag = next((i for i, a in enumerate(argv[1:]) if a.startswith('--')), len(argv) - 1)
    sources, flags = argv[1:1 + first_flag], argv[1 + first_flag:]
    if not sources:
        raise UserError(f"{argv[0]} needs at least one source (see python analysis.py --help)")
    f = parse(flags, globals(), CHOICES, RANGES)[0]
    f.device = pick_device(f.device)  # resolved once: 'auto' -> cuda, mps or cpu
    out_prefix(f, argv[0])
    return SUBCOMMANDS[argv[0]](sources, f)


if __name__ == '__main__':
    run_cli(main)
