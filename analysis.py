"""
The paper's figures and Theorem 4.1, one subcommand each; each writes OUT.png and OUT.json.

  python analysis.py outliers gpt2-medium out/bridge/ckpt.pt [vit.safetensors]   # Fig. 2: outlier weights
  python analysis.py curves out/noise0 out/noise15 out/noise30 out/noise100       # Fig. 3: accuracy vs epoch
  python analysis.py landscape out/bridge/ckpt.pt                                 # Fig. 4: loss landscape
  python analysis.py tsne out/bridge out/bridge/ckpt.pt                           # Fig. 5: t-SNE of features
  python analysis.py alignment out/bridge out/bridge/ckpt.pt                      # Theorem 4.1: Sigma_w vs Sigma_x

A source is a ckpt.pt written by bridge.py, or a run directory (out/bridge), which stands for the weights
that run STARTED from: rebuilt from its config.json and seed, exactly as bridge.py built them. `outliers`
also takes GPT-2 names, Hugging Face checkpoints and any state-dict file (a vision model to compare with).
Flags as in bridge.py (--key value or --key=value). Needs matplotlib and scikit-learn.
"""
import json
import os
import re
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bridge import build_model, parse_flags, read_checkpoint, setup_device
from data import augment, load_dataset
from model import GPT, GPTConfig, IGNORED, OFFICIAL, UserError, read_weights

out = ''               # output prefix: OUT.png and OUT.json; '': analysis/<subcommand>
device = 'auto'        # auto | cuda | cpu | mps
dataset = ''           # images for landscape/tsne/alignment; '': the run's own dataset
data_dir = ''          # '': the run's own data_dir
split = 'test'         # landscape/tsne: test (true labels) | train (landscape: the labels the run trained on)
batch_size = 64        # images per forward pass
threshold = 1.0        # outliers: |w| > threshold (the paper's code: 1.0)
k_std = 6.0            # outliers, relative variant: |w| > k_std * std of the weight's own tensor
grid = 11              # landscape: points per axis; alpha and beta in linspace(-span, span, grid)
span = 1.0             # landscape: alpha = -1 is the start of training, alpha = 0 its end
batches = 2            # landscape: batches per loss value
images = 500           # tsne: images embedded; alignment: images whose patches give Sigma_x
top_k = 8              # alignment: leading eigenvectors compared
seed = 0               # the random direction of landscape, t-SNE's initialization
FLAGS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (bool, int, float, str))}
CHOICES = dict(split=('test', 'train'))


def pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import sklearn  # noqa: F401  (tsne needs it; better to know before a long run)
    except ImportError as e:
        raise UserError(f"analysis.py draws with matplotlib and uses scikit-learn ({e.name} is missing): "
                        f"pip install matplotlib scikit-learn") from None
    return plt


def save(f, name, fig, result):
    """Write OUT.png and OUT.json (the numbers behind the figure)."""
    prefix = f.out or os.path.join('analysis', name)
    os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
    fig.savefig(prefix + '.png', dpi=120, bbox_inches='tight')
    with open(prefix + '.json', 'w') as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {prefix}.png and {prefix}.json")


def is_run(src):
    """A directory written by bridge.py (its config.json holds the run's flags, not a Hugging Face config)."""
    path = os.path.join(src, 'config.json')
    if not os.path.isfile(path):
        return False
    with open(path) as fh:
        return 'model_config' in json.load(fh)


def name_of(src):
    """A source's label in figures: 'run (step 0)' for a run directory, 'run/ckpt.pt' for a checkpoint."""
    src = src.rstrip('/')
    if os.path.isdir(src) and is_run(src):
        return f"{os.path.basename(src)} (step 0)"
    return os.path.join(os.path.basename(os.path.dirname(src)), os.path.basename(src)) if os.sep in src else src


def load_run(src, device):
    """A ckpt.pt -> (its model, its run config, the checkpoint); a run directory -> (the model that run
    started from, rebuilt from config.json with the run's seed, its config, None). Model in eval mode."""
    if os.path.isdir(src):
        if not is_run(src):
            raise UserError(f"{src} is not a bridge.py run directory: no config.json of a run in it")
        with open(os.path.join(src, 'config.json')) as fh:
            c = SimpleNamespace(**json.load(fh))
        start = read_checkpoint(c.init_from) if c.init_from not in OFFICIAL and c.init_from != 'scratch' else None
        torch.manual_seed(c.seed)  # as bridge.py does right before building: the same new weights
        net = build_model(c, c.model_config['n_classes'], start)
        print(f"{src}: the run's weights at step 0")
        return net.to(device).eval(), c, None
    ckpt = read_checkpoint(src) if os.path.isfile(src) else None
    if ckpt is None:
        raise UserError(f"'{src}' is neither a ckpt.pt written by bridge.py nor a run directory")
    net = GPT(GPTConfig(**ckpt['model_config']))
    net.load_state_dict(ckpt['model'])
    print(f"{src}: step {ckpt['iter']} of a {ckpt['config']['stage']} run")
    return net.to(device).eval(), SimpleNamespace(**ckpt['config']), ckpt


def run_images(c, f, device):
    """The dataset of run config c (or of --dataset/--data_dir), on the device."""
    return load_dataset(f.dataset or c.dataset, f.data_dir or c.data_dir, c.img_size, device,
                        c.memory_gb, c.num_workers)


def images_for(net, d, split, n, device):
    """The first n images of a split as the model sees them (resized, normalized) and their true labels."""
    x, y = d[split][0], d[split][1]
    if not isinstance(x, torch.Tensor):
        raise UserError("analysis.py needs the dataset in memory: raise --memory_gb in the run's config")
    return augment(x[:n], 'eval', net.config.img_size, d['mean'], d['std']), y[:n]


# ----------------------------------------------------------------------------- Fig. 2: outlier weights
def state_dict_of(src):
    """Any model for counting: a GPT-2 name or HF checkpoint, a ckpt.pt, a run directory, a state-dict file."""
    if os.path.isdir(src) and is_run(src):
        return load_run(src, 'cpu')[0].state_dict()
    if src in OFFICIAL or os.path.isdir(src):
        return GPT.from_pretrained(src).state_dict()
    if not os.path.isfile(src):
        raise UserError(f"no model '{src}': use a GPT-2 name, a checkpoint directory or file, a ckpt.pt or a run directory")
    ckpt = read_checkpoint(src)
    return ckpt['model'] if ckpt is not None else read_weights(src)


def is_layernorm(name):
    module = name.rsplit('.', 2)[-2] if name.count('.') else name
    return module.startswith('ln') or 'norm' in module


def is_embedding(name):
    return any(s in name for s in ('wte', 'wpe', 'embed', 'position', 'cls_token', 'patch'))


def outliers(sources, f):
    """Fig. 2: how many weights exceed |w| > threshold (absolute, as the paper's code) and lie more than k_std
    standard deviations from their own tensor's mean (relative), overall, without LayerNorm/embedding
    parameters, and per block."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sources) + 1, figsize=(4.5 * (len(sources) + 1), 3.4), squeeze=False)
    result = {'threshold': f.threshold, 'k_std': f.k_std, 'models': {}}
    for ax, src in zip(axes[0], sources):
        sd = {k: v.detach().float().flatten() for k, v in state_dict_of(src).items()
              if v.is_floating_point() and not IGNORED.search(k)}
        absolute = {k: v.abs() > f.threshold for k, v in sd.items()}
        # z-score: for zero-mean matrices this is |w| > k_std * std; LayerNorm gains centre on 1, not 0
        relative = {k: (v - v.mean()).abs() > f.k_std * v.std() if v.numel() > 1 else torch.zeros_like(v, dtype=torch.bool)
                    for k, v in sd.items()}

        def count(names):
            n = sum(sd[k].numel() for k in names)
            a, r = sum(int(absolute[k].sum()) for k in names), sum(int(relative[k].sum()) for k in names)
            return dict(params=n, outliers=a, ratio=a / max(n, 1), relative_outliers=r, relative_ratio=r / max(n, 1))
        blocks = {}
        for k in sd:
            if m := re.search(r'(?:^|\.)(?:h|layer|layers|blocks)\.(\d+)\.', k):
                blocks.setdefault(int(m.group(1)), []).append(k)
        r = dict(all=count(list(sd)), without_layernorm_and_embeddings=count([k for k in sd if not is_layernorm(k) and not is_embedding(k)]),
                 per_block=[dict(block=b, **count(names)) for b, names in sorted(blocks.items())])
        result['models'][src] = r
        print(f"{src}: {r['all']['outliers']:,} of {r['all']['params']:,} weights beyond +-{f.threshold:g} "
              f"({r['all']['ratio']:.4%}); without LayerNorm/embeddings {r['without_layernorm_and_embeddings']['ratio']:.4%}; "
              f"beyond {f.k_std:g} std of their tensor: {r['all']['relative_ratio']:.4%}")
        values = torch.cat(list(sd.values()))
        stride = max(1, len(values) // 200_000)  # the line is subsampled; every outlier is drawn
        ax.plot(torch.arange(0, len(values), stride).numpy(), values[::stride].numpy(), color='0.6', lw=0.3)
        idx = torch.cat(list(absolute.values())).nonzero().flatten()
        ax.scatter(idx.numpy(), values[idx].numpy(), s=2, color='red')
        for y in (f.threshold, -f.threshold):
            ax.axhline(y, ls='--', color='k', lw=0.8)
        ax.set_ylim(-5, 5)
        ax.set_title(name_of(src), fontsize=9)
        ax.set_xlabel('parameter index')
        ax.text(0.02, 0.95, f"outliers: {r['all']['outliers']:,} ({r['all']['ratio']:.3%})", transform=ax.transAxes, va='top', fontsize=8)
        axes[0][-1].hist(values[values != 0].abs().log10().numpy(), bins=100, histtype='step', density=True, label=name_of(src))
    axes[0][0].set_ylabel('weight value')
    axes[0][-1].axvline(torch.tensor(f.threshold).log10().item(), ls='--', color='k', lw=0.8)
    axes[0][-1].set(yscale='log', xlabel='log10 |w|  (w != 0)', title='distribution of |w|')
    axes[0][-1].legend(fontsize=7)
    save(f, 'outliers', fig, result)
    return result


# ----------------------------------------------------------------------------- Fig. 3: learning curves
def run_label(run, c):
    init = c.get('init_from', '?')
    init = init if init in OFFICIAL or init == 'scratch' else f"from {os.path.basename(os.path.dirname(init)) or init}"
    fraction = c.get('random_label_fraction', -1.0)
    fraction = fraction if fraction >= 0 else {'bridge': 1.0}.get(c.get('stage'), 0.0)
    freeze = f", freeze {c['freeze']}" if c.get('freeze', 'none') != 'none' else ''
    return f"{os.path.basename(run.rstrip('/'))}: {init}, {fraction:.0%} random labels{freeze}"


def curves(sources, f):
    """Fig. 3: train accuracy (on the labels trained on) and test accuracy against epochs, one line per run."""
    plt = pyplot()
    fig, (ax_train, ax_test) = plt.subplots(1, 2, figsize=(11, 3.8))
    result = {}
    for src in sources:
        path = os.path.join(src, 'metrics.jsonl') if os.path.isdir(src) else src
        if not os.path.isfile(path):
            raise UserError(f"no metrics at {path}: give run directories (or their metrics.jsonl) written by bridge.py")
        with open(path) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        config_path = os.path.join(os.path.dirname(path), 'config.json')
        c = json.load(open(config_path)) if os.path.exists(config_path) else {}
        label = run_label(os.path.dirname(path) or '.', c)
        epochs = [r['epoch'] for r in rows]
        ax_train.plot(epochs, [100 * r['train_acc'] for r in rows], marker='.', label=label)
        ax_test.plot(epochs, [100 * r['test_acc'] for r in rows], marker='.', label=label)
        result[src] = dict(label=label, epochs=epochs[-1], final_train_acc=rows[-1]['train_acc'],
                           final_test_acc=rows[-1]['test_acc'], best_test_acc=max(r['test_acc'] for r in rows))
    ax_train.set(xlabel='epoch', ylabel='train accuracy (%), on the labels trained on', title='fitting')
    ax_test.set(xlabel='epoch', ylabel='test accuracy (%), true labels', title='generalization')
    ax_test.legend(fontsize=7)
    save(f, 'curves', fig, result)
    return result


# ----------------------------------------------------------------------------- Fig. 4: loss landscape
def landscape(sources, f):
    """Fig. 4: L(theta_T + alpha d1 + beta d2) with d1 = theta_T - theta_0 (the training displacement, so
    alpha = -1 is the start) and d2 random, orthogonal to d1 layer by layer, and scaled in every layer
    (parameter tensor) to d1's norm there: both directions are normalized per layer. Frozen layers stay put."""
    plt = pyplot()
    if len(sources) not in (1, 2):
        raise UserError("landscape takes the trained ckpt.pt, optionally preceded by its start (a ckpt.pt or run directory)")
    dev = f.device
    net, c, ckpt = load_run(sources[-1], dev)
    start = load_run(sources[0] if len(sources) == 2 else os.path.dirname(os.path.abspath(sources[-1])), dev)[0]
    theta = {k: p.detach().clone() for k, p in net.named_parameters()}
    theta0 = dict(start.named_parameters())
    if {k: v.shape for k, v in theta.items()} != {k: v.shape for k, v in theta0.items()}:
        raise UserError(f"{sources[0]} and {sources[-1]} are not the same network")
    g = torch.Generator(dev).manual_seed(f.seed)
    d1, d2 = {}, {}
    for k, t in theta.items():
        d1[k] = t - theta0[k].detach()
        r = torch.randn(t.shape, generator=g, device=dev)
        norm = d1[k].norm()
        if norm > 0:
            r -= (r * d1[k]).sum() / norm ** 2 * d1[k]  # orthogonal to d1 in this layer
        d2[k] = r * (norm / r.norm()) if norm > 0 else torch.zeros_like(r)
    d = run_images(c, f, dev)
    n = f.batches * f.batch_size
    x, y = images_for(net, d, f.split, n, dev)
    if f.split == 'train':
        y = ckpt['train_labels'][:n].to(dev)  # the objective the run optimized

    @torch.no_grad()
    def loss_at(alpha, beta):
        for k, p in net.named_parameters():
            p.copy_(theta[k] + alpha * d1[k] + beta * d2[k])
        return sum(F.cross_entropy(net(xb).float(), yb, reduction='sum').item()
                   for xb, yb in zip(x.split(f.batch_size), y.split(f.batch_size))) / len(y)
    axis = torch.linspace(-f.span, f.span, f.grid).tolist()
    surface = [[loss_at(a, b) for a in axis] for b in axis]  # rows: beta, columns: alpha
    result = dict(alphas=axis, betas=axis, loss=surface, loss_end=loss_at(0.0, 0.0), loss_start=loss_at(-1.0, 0.0),
                  split=f.split, images=len(y), moved_tensors=sum(1 for v in d1.values() if v.abs().max() > 0))
    print(f"loss at the end of training {result['loss_end']:.4f}, at its start {result['loss_start']:.4f} "
          f"({f.grid}x{f.grid} grid, {len(y)} {f.split} images)")
    fig = plt.figure(figsize=(11, 4.2))
    ax = fig.add_subplot(1, 2, 1)
    cs = ax.contourf(axis, axis, surface, levels=30, cmap='RdYlBu_r')
    fig.colorbar(cs, ax=ax)
    ax.plot([0], [0], 'k*', ms=10, label='end of training')
    if -f.span <= -1:
        ax.plot([-1], [0], 'ko', ms=6, label='start')
    ax.set(xlabel='alpha (along training, theta_T - theta_0)', ylabel='beta (random, per-layer normalized)')
    ax.legend(fontsize=7)
    ax3 = fig.add_subplot(1, 2, 2, projection='3d')
    A, B = torch.meshgrid(torch.tensor(axis), torch.tensor(axis), indexing='xy')
    ax3.plot_surface(A.numpy(), B.numpy(), torch.tensor(surface).numpy(), cmap='RdYlBu_r')
    ax3.set(xlabel='alpha', ylabel='beta', zlabel='loss')
    save(f, 'landscape', fig, result)
    return result


# ----------------------------------------------------------------------------- Fig. 5: t-SNE of features
def tsne(sources, f):
    """Fig. 5: pooled features (what the head sees) of the same images under each model, embedded with
    t-SNE and coloured by true class; silhouette score and intra-class spread measured on the features."""
    plt = pyplot()
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score
    dev = f.device
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 4), squeeze=False)
    result, d = {}, None
    for ax, src in zip(axes[0], sources):
        net, c, _ = load_run(src, dev)
        d = d or run_images(c, f, dev)
        x, y = images_for(net, d, f.split, f.images, dev)
        with torch.no_grad():
            feats = torch.cat([net.features(xb) for xb in x.split(f.batch_size)]).float().cpu()
        y = y.cpu()
        centroids = torch.stack([feats[y == k].mean(0) for k in y.unique()])
        intra = (feats - centroids[torch.searchsorted(y.unique(), y)]).norm(dim=1).mean().item()
        spread = (feats - feats.mean(0)).norm(dim=1).mean().item()
        emb = TSNE(2, perplexity=min(30.0, (len(y) - 1) / 3), init='pca', random_state=f.seed).fit_transform(feats.numpy())
        result[src] = dict(silhouette=float(silhouette_score(feats.numpy(), y.numpy())), intra_class_distance=intra,
                           intra_over_total_spread=intra / spread, images=len(y))
        print(f"{src}: silhouette {result[src]['silhouette']:.3f}, intra-class distance / total spread "
              f"{result[src]['intra_over_total_spread']:.3f}")
        ax.scatter(emb[:, 0], emb[:, 1], c=y.numpy(), cmap='tab10' if len(y.unique()) <= 10 else 'tab20', s=4)
        ax.set_title(f"{name_of(src)}\nsilhouette {result[src]['silhouette']:.3f}", fontsize=9)
        ax.set(xticks=[], yticks=[])
    save(f, 'tsne', fig, result)
    return result


# ----------------------------------------------------------------------------- Theorem 4.1: alignment
def alignment(sources, f):
    """Theorem 4.1: random-label training aligns the first layer's weight covariance Sigma_w with the input
    covariance Sigma_x. Sigma_x: covariance of the (3*p*p)-vectors of image patches the patch embedding sees;
    Sigma_w = W^T W / C over its C filters. Reports the cosine <Sigma_w, Sigma_x> / (|Sigma_w| |Sigma_x|) and
    the overlap of their top_k eigenvectors (|U_w^T U_x|_F^2 / k: 1 = same subspace, k/D = chance)."""
    plt = pyplot()
    dev = f.device
    fig, ax = plt.subplots(figsize=(6, 4))
    result, cache = {}, {}
    for src in sources:
        net, c, _ = load_run(src, dev)
        key = (f.dataset or c.dataset, f.data_dir or c.data_dir, net.config.img_size, net.config.patch_size)
        if key not in cache:
            x, _ = images_for(net, run_images(c, f, dev), 'train', f.images, dev)
            p = net.config.patch_size
            patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2).reshape(-1, 3 * p * p)  # (N*T, 3*p*p), as Conv2d sees them
            sigma_x = torch.cov(patches.T.double())
            evals, evecs = torch.linalg.eigh(sigma_x)
            cache[key] = sigma_x, evals.flip(0), evecs.flip(1)  # descending
            ax.plot((evals.flip(0) / evals.sum()).cpu().numpy(), 'k-', lw=2, label='Sigma_x eigenvalues')
        sigma_x, evals, ux = cache[key]
        w = net.patch.weight.detach().double().reshape(net.config.n_embd, -1)  # (C, 3*p*p)
        sigma_w = w.T @ w / w.size(0)
        cosine = ((sigma_w * sigma_x).sum() / (sigma_w.norm() * sigma_x.norm())).item()
        uw = torch.linalg.eigh(sigma_w)[1].flip(1)
        k = min(f.top_k, uw.size(1))
        overlap = ((uw[:, :k].T @ ux[:, :k]).norm() ** 2 / k).item()
        in_x_basis = torch.diagonal(ux.T @ sigma_w @ ux)  # Sigma_w seen along Sigma_x's eigenvectors
        result[src] = dict(alignment=cosine, top_k_overlap=overlap, k=k, chance_overlap=k / uw.size(1))
        print(json.dumps(dict(source=src, **result[src])))
        ax.plot((in_x_basis / in_x_basis.sum()).cpu().numpy(), lw=1, label=f"{name_of(src)}: cos {cosine:.3f}")
    ax.set(yscale='log', ylim=(1e-6, 2), xlabel="eigenvector of Sigma_x (largest first)", ylabel='share of variance',
           title='Sigma_w along the eigenvectors of Sigma_x')
    ax.legend(fontsize=7)
    save(f, 'alignment', fig, result)
    return result


SUBCOMMANDS = dict(outliers=outliers, curves=curves, landscape=landscape, tsne=tsne, alignment=alignment)


def main(argv):
    if not argv or argv[0] not in SUBCOMMANDS:
        raise UserError(f"usage: python analysis.py {{{','.join(SUBCOMMANDS)}}} SOURCE [SOURCE ...] [--flag value ...]"
                        + (f"; unknown subcommand '{argv[0]}'" if argv else ''))
    first_flag = next((i for i, a in enumerate(argv[1:]) if a.startswith('--')), len(argv) - 1)
    sources, flags = argv[1:1 + first_flag], argv[1 + first_flag:]
    if not sources:
        raise UserError(f"{argv[0]} needs at least one source (see python analysis.py's docstring)")
    f = SimpleNamespace(**parse_flags(FLAGS, flags, CHOICES)[0])
    f.device = setup_device(SimpleNamespace(device=f.device, dtype='float32'))[0]  # resolved once: 'auto' -> cuda/mps/cpu
    return SUBCOMMANDS[argv[0]](sources, f)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}")
