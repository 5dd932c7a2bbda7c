"""
Images for bridge training: datasets kept on the training device as uint8 and augmented there a
batch at a time (as airbench does), and the paper's random labels.

  load_dataset('cifar10', 'data', img_size=224, device='cuda')  -> images and labels on the GPU
  random_labels(labels, 10, fraction=1.0, seed=0)               -> the bridge stage's labels
  train_batches(...) / eval_batches(...)                        -> (uint8 images, labels) batches
  augment(images, 'rrc', 224, mean, std)                        -> normalized float images

Folders too large for memory (ImageNet) stream through DataLoader workers instead; either way a
batch reaches `augment` as uint8 on the device, so every dataset gets the same GPU augmentation.
"""
import hashlib
import io
import math
import os
import re
import signal
import stat
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets.folder import IMG_EXTENSIONS

from configurator import UserError

# per-channel mean and std: the CIFAR values of the paper's code; ImageNet's for the others
CIFAR_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# the datasets that --dataset names (bridge.py, analysis.py and export.py read this table):
# whether downloads.py fetches it into --data_dir (else it is the user's own folder), and its
# per-channel mean and std
DATASETS = {
    'cifar10': dict(fetched=True, mean_std=CIFAR_MEAN_STD),
    'cifar100': dict(fetched=True, mean_std=CIFAR_MEAN_STD),
    'tinyimagenet': dict(fetched=True, mean_std=IMAGENET_MEAN_STD),
    'folder': dict(fetched=False, mean_std=IMAGENET_MEAN_STD),
}
LAYOUT = "DATA_DIR/train/<class>/<image>, DATA_DIR/val/<class>/<image> (the same classes in both)"


def load_dataset(name, data_dir, img_size, device, num_workers=0, memory_gb=None):
    """-> dict(train=(images, labels), test=(images, labels), classes, mean, std, fingerprint) on
    the device. A folder whose uint8 copy exceeds memory_gb (default: a quarter of the device's
    memory, or of the RAM off CUDA) stays a dataset that streams from disk."""
    device = torch.device(device)
    if memory_gb is None and device.type == 'cuda':
        memory_gb = torch.cuda.get_device_properties(device).total_memory / 4e9
    if memory_gb is None:
        memory_gb = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 4e9
    if name in ('cifar10', 'cifar100'):
        from downloads import cifar  # a dataset of the network's: read only when it is named
        xtr, ytr, classes, htr = cifar(name, data_dir, train=True)
        xte, yte, _, hte = cifar(name, data_dir, train=False)
    else:  # both splits are found and listed before either is decoded
        root, (train, classes), (val, val_classes) = splits(name, data_dir)
        if val_classes != classes:
            raise UserError(f"{data_dir}: train and val hold other classes; expected {LAYOUT}")
        side = common_side(train + val, img_size) if name == 'folder' else 64  # Tiny-ImageNet's
        xtr, ytr, htr = image_folder(f"{root}/train", train, side, memory_gb, num_workers)
        xte, yte, hte = image_folder(f"{root}/val", val, side, memory_gb, num_workers)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1)
                 for v in DATASETS[name]['mean_std'])
    stored = 'x'.join(map(str, xte.shape[-2:])) if isinstance(xte, torch.Tensor) else 'streamed'
    how = 'resized a batch at a time'
    if name == 'folder' and side < img_size:
        how = f"all {side}x{side}, so kept at that size and resized a batch at a time"
    elif name == 'folder':
        how = 'central squares, resized once when decoded'
    print(f"{name}: {len(ytr)} train / {len(yte)} test images, {len(classes)} classes, stored "
          f"{stored} on {device}, trained at {img_size}x{img_size} ({how})")
    labels = torch.cat([ytr, yte]).to(torch.int64).numpy().tobytes()
    fingerprint = dict(classes=list(classes), train=len(ytr), test=len(yte),  # a run's data
                       labels=hashlib.sha256(labels).hexdigest()[:16],
                       images=hashlib.sha256((htr + hte).encode()).hexdigest()[:16])
    on_device = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
    return dict(train=(on_device(xtr), ytr.to(device)), test=(on_device(xte), yte.to(device)),
                classes=classes, mean=mean, std=std, fingerprint=fingerprint)


# ----------------------------------------------------------------------------- image folders
def splits(name, data_dir):
    """-> (the dataset's root, (train samples, classes), (val samples, classes)): a folder in the
    class-folder layout, or Tiny-ImageNet in the layout it is distributed in."""
    if name == 'tinyimagenet':
        from downloads import tiny_imagenet
        return tiny_imagenet(data_dir)
    return data_dir, scan(f"{data_dir}/train"), scan(f"{data_dir}/val")


def common_side(samples, img_size):
    """The side of a dataset whose images are all squares of one size, at most img_size: it is kept
    at that size and resized on the device, as CIFAR is. Else img_size: each image's central square
    is resized to it once, here. Reads headers only, up to the first image that differs."""
    first = None
    for path, _ in samples:
        try:
            with Image.open(path) as img:
                size = img.size
        except Exception:  # decoding names it, with the others
            return img_size
        first = first or size
        if size != first or size[0] != size[1] or size[0] > img_size:
            return img_size
    return first[0]


def image_folder(root, samples, side, memory_gb, num_workers):
    """The samples of scan(root) -> (uint8 images (N, 3, side, side), or an Images dataset to
    stream when larger than memory_gb), labels (N,), a hash of every file's name and bytes. Every
    file is read and decoded once here, by num_workers processes, so that a bad one is named before
    training, not at step 70."""
    gb = len(samples) * 3 * side * side / 1e9
    stream = gb > memory_gb
    print(f"{root}: decoding {len(samples)} images at {side}x{side} ({gb:.2f} GB: "
          f"{'streamed, so checked now and decoded again each epoch' if stream else 'kept'}, "
          f"budget {memory_gb:.1f} GB)")
    loader = DataLoader(Images(samples, side, keep=not stream, check=True), batch_size=256,
                        num_workers=num_workers, worker_init_fn=leave_signals_to_the_main_process)
    images, whys, digests, start, shown = [], [], [], time.time(), time.time()
    for x, why, digest in loader:  # each batch: (pixels, why unreadable or '', sha256 of the file)
        images.append(x)
        whys += why
        digests += digest
        if time.time() - shown > 10:  # a folder of a million images takes minutes: say so
            shown = time.time()
            print(f"{root}: {len(whys)}/{len(samples)} images decoded "
                  f"({len(whys) / (shown - start):.0f} images/s)")
    bad = [os.path.relpath(samples[i][0], root) for i, w in enumerate(whys) if w]
    if bad:
        why = next(w for w in whys if w)
        raise UserError(f"{len(bad)} unreadable image file{'s' * (len(bad) > 1)} in {root}: "
                        f"{bad[0]} ({why}){''.join(', ' + p for p in bad[1:3])}"
                        f"{', ...' * (len(bad) > 3)}")
    labels = torch.tensor([k for _, k in samples])
    images = Images(samples, side, checked=True) if stream else torch.cat(images)
    # the files' names (relative: the folder may move) and bytes, the same whether kept or streamed
    names = [os.fsencode(os.path.relpath(p, root)) for p, _ in samples]
    content = b''.join(name + b' ' + sha.encode() + b'\n' for name, sha in zip(names, digests))
    return images, labels, hashlib.sha256(content).hexdigest()


def scan(root, layout=LAYOUT):
    """DATA_DIR/<split>/<class>/**/<image> -> ([(path, class index)], class names), sorted. Hidden
    folders and files (.ipynb_checkpoints, .DS_Store) are not data; links are followed, but not
    into a folder already walked or up into its own parents (a loop). A file reached twice (through
    a link) counts once; in two classes it is refused, since it can have one label only."""
    if not os.path.isdir(root):
        raise UserError(f"no image folder at {root}; expected {layout}")
    try:
        entries = [e for e in os.scandir(root) if e.is_dir()]
    except OSError as e:
        raise unreadable(e) from None
    hidden = sorted(e.name for e in entries if e.name.startswith('.'))
    if hidden:
        print(f"{root}: skipping hidden folder{'s' * (len(hidden) > 1)} {', '.join(hidden)}")
    classes = sorted(e.name for e in entries if not e.name.startswith('.'))
    samples, owner = [], {}  # owner: a file's real path -> (the path it was found at, its class)
    for k, name in enumerate(classes):
        found = images_under(os.path.join(root, name))
        if not found:
            raise UserError(f"class folder {root}/{name} holds no images "
                            f"({' '.join(IMG_EXTENSIONS)})")
        for path, real in sorted(found):
            first, label = owner.setdefault(real, (path, k))
            if label != k:
                raise UserError(f"{path} and {first} are one file (through a link), in the classes "
                                f"{name} and {classes[label]}: a file can have one label only")
            if first == path:
                samples.append((path, k))
    if not samples:
        raise UserError(f"{root} holds no class folders; expected {layout}")
    return samples, classes


def unreadable(e):
    """The UserError of a folder of a dataset that cannot be listed (its images would be missed)."""
    return UserError(f"cannot read the folder {e.filename}: {e.strerror} (every folder of a "
                     f"dataset must be readable, or its images would be left out)")


def raise_error(e):
    """os.walk's onerror: an unreadable folder stops the walk instead of being skipped."""
    raise unreadable(e)


def images_under(top):
    """The image files below one class folder -> [(path, real path)], each folder walked once; a
    pipe or device named like an image is an error (reading it would wait forever)."""
    real_top, seen, found = os.path.realpath(top), set(), []
    for folder, subfolders, files in os.walk(top, onerror=raise_error, followlinks=True):
        subfolders[:] = sorted(s for s in subfolders if not s.startswith('.'))
        real = os.path.realpath(folder)
        if real in seen or real_top.startswith(real + os.sep):
            subfolders.clear()
            continue
        seen.add(real)
        for f in files:
            path = os.path.join(folder, f)
            if f.startswith('.') or not f.lower().endswith(IMG_EXTENSIONS):
                continue
            if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
                raise UserError(f"{path} is not a regular file (a pipe, socket or device): "
                                f"remove it from the dataset")
            linked = os.path.islink(path)  # else its real path is its folder's, one call less
            found.append((path, os.path.realpath(path) if linked else os.path.join(real, f)))
    return found


def leave_signals_to_the_main_process(worker_id):
    """A decoding worker ignores Ctrl-C (the terminal sends it to every process of the job) and dies
    quietly on SIGTERM: it inherited bridge.py's handler, but the stop is the main process's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Images(torch.utils.data.Dataset):
    """samples[i] -> (uint8 (3, side, side), '', the file's sha256 if check else ''), or (zeros,
    why, '') for a file that cannot be decoded, so that bad files are reported together. check:
    the start-up pass, which hashes every file (the fingerprint); keep=False decodes in full but
    returns no pixels (that pass over a streamed folder). Training streams with neither; checked:
    that pass has read every file (a failure later means the file changed)."""

    def __init__(self, samples, side, keep=True, check=False, checked=False):
        self.samples, self.side, self.keep, self.check = samples, side, keep, check
        self.checked = checked

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        side = self.side if self.keep else 0
        try:
            with open(self.samples[i][0], 'rb') as f:
                raw = f.read()
            x = decode(io.BytesIO(raw), self.side)
        except Exception as e:  # OSError, ValueError, SyntaxError, DecompressionBombError...
            why = re.sub(r' <_io.BytesIO .*>', '', (str(e).splitlines() or [''])[0])[:120]
            why = f"{type(e).__name__}: {why}"
            return torch.zeros(3, side, side, dtype=torch.uint8), why, ''
        digest = hashlib.sha256(raw).hexdigest() if self.check else ''
        return x[:, :side, :side], '', digest


def decode(path, side):
    """An image file -> uint8 (3, side, side): its central square, resized. The least work on the
    CPU: a large JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers side, and the resize
    is bilinear (antialiased; 1.3x faster than bicubic at 500x375 -> 224, and the crops on the
    device are bicubic). 16- and 32-bit images keep their top 8 bits (convert('RGB') clips them);
    float images (TIFF mode F) are read as 0..1."""
    with Image.open(path) as img:
        img.draft('RGB', (side, side))
        if img.mode in ('I', 'I;16', 'I;16B', 'I;16L'):  # the top 8 bits of the integers
            img = Image.fromarray(top_8_bits(img))
        if img.mode == 'F':
            img = Image.fromarray((np.asarray(img).clip(0, 1) * 255).round().astype(np.uint8))
        w, h = img.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        img = img.convert('RGB').resize((side, side), Image.Resampling.BILINEAR, box=box)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def top_8_bits(img):
    """A 16- or 32-bit integer image -> uint8 (H, W): its top 8 bits. Pillow reads both 16-bit PNGs
    and 32-bit TIFFs as mode I; a TIFF says its bits (tag 258) and whether they are signed (tag 339
    = 2: the sign takes one, and negatives are black; else mode I's int32 holds uint32 bits)."""
    tags = getattr(img, 'tag_v2', {})
    bits = tags.get(258, (16,))[0] if img.mode == 'I' else 16
    signed = tags.get(339, (1,))[0] == 2
    pixels = np.asarray(img)
    if img.mode == 'I' and not signed:
        pixels = pixels.view(np.uint32)
    pixels = pixels.astype(np.int64).clip(0) >> (bits - 8 - signed)
    return pixels.clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the paper's labels
def random_labels(labels, n_classes, fraction, seed, wrong=False):
    """The bridge stage's labels: a seeded, fixed choice of round(fraction * N) training examples
    gets a label drawn uniformly from all classes, independent of the true one (so the stage needs
    no labels at all). wrong=True draws from the other n_classes - 1 classes instead, as the first
    author's code does (every chosen label is then wrong). The same seed, the same labels."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    chosen = torch.randperm(len(labels), generator=g)[:round(fraction * len(labels))]
    new = labels.clone()
    if wrong:  # true + 1..C-1 (mod C): uniform over the other classes
        shift = torch.randint(1, n_classes, (len(chosen),), generator=g)
        new[chosen] = (labels[chosen] + shift) % n_classes
    else:
        new[chosen] = torch.randint(0, n_classes, (len(chosen),), generator=g)
    return new


def balanced_subset(y, n, seed):
    """n indices into labels y, ascending: each class's examples in a seeded order, taken a round
    at a time (one of every class, then a second of every class...): the classes stay balanced."""
    g = torch.Generator().manual_seed(seed)
    y = y.cpu()
    rank = torch.empty(len(y), dtype=torch.long)  # an example's place in its class's order
    for k in y.unique():
        members = (y == k).nonzero().flatten()
        rank[members[torch.randperm(len(members), generator=g)]] = torch.arange(len(members))
    order = torch.argsort(rank * (int(y.max()) + 1) + y)  # round by round, classes in order
    return order[:n].sort().values


def take(d, split, n, seed, flag='--subset'):
    """The dataset d with a seeded, class-balanced subset of n of the images of one split (--subset,
    --test_subset, analysis.py --images); the other split stays as it was."""
    x, y = d[split]
    if n > len(y):
        raise UserError(f"{flag} {n}: the {split} split holds {len(y)} images")
    idx = balanced_subset(y, n, seed)
    per_class = torch.bincount(y.cpu()[idx], minlength=len(d['classes']))
    print(f"a seeded, class-balanced subset (seed {seed}): {n} of the {len(y)} {split} images, "
          f"{int(per_class.min())}-{int(per_class.max())} of each class")
    if isinstance(x, torch.Tensor):
        x = x[idx.to(x.device)]
    else:  # a streamed folder: its samples
        x = Images([x.samples[i] for i in idx.tolist()], x.side, checked=x.checked)
    return dict(d, **{split: (x, y[idx.to(y.device)])})


# ----------------------------------------------------------------------------- batches
def batches(images, labels, order, num_workers=0):
    """Yields (uint8 images (B, 3, h, w) on the device, labels (B,)) for each CPU index tensor."""
    device = labels.device
    on_device = torch.cat(order).to(device).split([len(i) for i in order])  # one copy per pass
    if isinstance(images, torch.Tensor):  # already on the device: a gather per batch, no host sync
        for idx in on_device:
            yield images[idx], labels[idx]
        return
    # a folder too large for memory: workers decode, pinned memory copies asynchronously
    loader = DataLoader(images, batch_sampler=[i.tolist() for i in order], num_workers=num_workers,
                        pin_memory=device.type == 'cuda',
                        worker_init_fn=leave_signals_to_the_main_process)
    for (x, why, _), idx, cpu_idx in zip(loader, on_device, order):
        bad = [(i, w) for i, w in zip(cpu_idx.tolist(), why) if w]
        if bad:
            since = ': it was readable when the run started' * images.checked
            raise UserError(f"cannot decode {images.samples[bad[0][0]][0]} ({bad[0][1]}){since}")
        yield x.to(device, non_blocking=True), labels[idx]


def train_batches(images, labels, batch_size, start=0, seed=0, rank=0, world=1, num_workers=0):
    """Micro-batches forever, from micro-batch number `start` on. Each epoch is a seeded
    permutation, the same on every rank; rank r takes every world-th example of it. The position
    depends on (seed, start) only: a resumed run sees the batches an uninterrupted one would."""
    per_epoch = steps_per_epoch(len(labels), batch_size, world)
    epoch, i = divmod(start, per_epoch)
    while True:
        g = torch.Generator().manual_seed(1_000_003 * seed + epoch)
        order = torch.randperm(len(labels), generator=g)[rank::world]
        order = order[:per_epoch * batch_size].view(per_epoch, batch_size)  # (steps, B)
        yield from batches(images, labels, list(order[i:]), num_workers)
        epoch, i = epoch + 1, 0


def steps_per_epoch(n, batch_size, world=1):
    """Whole micro-batches of batch_size per process in one pass over n examples."""
    if batch_size * world > n:
        raise UserError(f"--batch_size {batch_size} x {world} processes exceeds the {n} training "
                        f"images")
    return n // (batch_size * world)


def eval_batches(images, labels, batch_size, rank=0, world=1, num_workers=0):
    """The whole split once, in order; rank r takes every world-th example. Every batch holds
    batch_size examples: the last is padded with copies of the shard's first, labelled -1 (to be
    counted nowhere), so that a compiled model sees one shape and compiles no graph for the rest."""
    order = torch.arange(rank, len(labels), world)
    pad = -len(order) % batch_size
    order = list(torch.cat([order, order[:1].repeat(pad)]).split(batch_size))
    for i, (x, y) in enumerate(batches(images, labels, order, num_workers)):
        if pad and i == len(order) - 1:
            y = torch.where(torch.arange(batch_size, device=y.device) < batch_size - pad, y, -1)
        yield x, y


def augment(images, aug, img_size, mean, std):
    """uint8 (B, 3, h, w) on the device -> normalized float (B, 3, img_size, img_size), one
    grid_sample per augmented batch. aug: 'rrc' = RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3)
    + horizontal flip (the paper's code), 'crop' = random crop with 4 pixels of zero padding +
    flip (the CIFAR classic), 'none'/'eval' = resize only, as a standard image processor resizes
    (bicubic, edges replicated, clipped to [0, 1]: an export's preprocessor_config.json reproduces
    it). Each augmented image gets its own affine map from output to input coordinates (both in
    [-1, 1]): x_in = sx * x_out + tx, y_in = sy * y_out + ty; sx < 0 flips."""
    if aug in ('none', 'eval'):
        x = F.interpolate(images.float() / 255, size=(img_size, img_size), mode='bicubic',
                          align_corners=False, antialias=True).clamp(0, 1)
        return (x - mean) / std
    if aug not in ('rrc', 'crop'):
        raise UserError(f"unknown aug '{aug}': use rrc, crop or none")
    B, dev = images.size(0), images.device
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    flip = torch.where(torch.rand(B, device=dev) < 0.5, -1.0, 1.0)
    if aug == 'rrc':  # area and aspect ratio as torchvision samples them; a side > 1 is clamped
        area = torch.empty(B, device=dev).uniform_(0.2, 1.0)
        ratio = torch.empty(B, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
        w = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the side
        h = (area / ratio).sqrt().clamp(max=1.0)
        theta[:, 0, 0], theta[:, 1, 1] = w * flip, h
        theta[:, 0, 2] = (torch.rand(B, device=dev) * 2 - 1) * (1 - w)  # crop center, inside
        theta[:, 1, 2] = (torch.rand(B, device=dev) * 2 - 1) * (1 - h)
    else:  # crop: shift by -4..4 whole source pixels; outside the image is black
        shift = torch.randint(-4, 5, (B, 2), device=dev).float()
        theta[:, 0, 0] = flip
        theta[:, 0, 2] = 2 * shift[:, 0] / images.size(3)
        theta[:, 1, 2] = 2 * shift[:, 1] / images.size(2)
    x = images.float() / 255
    grid = F.affine_grid(theta, [B, 3, img_size, img_size], align_corners=False)  # (B, S, S, 2)
    x = F.grid_sample(x, grid, mode='bicubic', padding_mode='zeros', align_corners=False)
    return (x - mean) / std
