"""
Images for bridge training, kept on the training device as uint8 and augmented there a batch at a
time (as airbench does), and the paper's random labels.

An image folder (DIR/train/<class>/*, DIR/val/<class>/*) is scanned by torchvision and each image
decoded by PIL: its shorter side resized to img_size, then its central square (torchvision's
Resize + CenterCrop, what an image processor does). A folder too large for memory (ImageNet)
streams through DataLoader workers; either way a batch reaches `augment` as uint8 on the device.
"""
import hashlib
import math
import os
import signal
import time

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from configurator import UserError

CIFAR_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # the paper's code's
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# --dataset: each one's per-channel mean and std (bridge.py, analysis.py and export.py read this)
DATASETS = dict(cifar10=CIFAR_MEAN_STD, cifar100=CIFAR_MEAN_STD, tinyimagenet=IMAGENET_MEAN_STD,
                folder=IMAGENET_MEAN_STD)
CIFAR = dict(cifar10=torchvision.datasets.CIFAR10, cifar100=torchvision.datasets.CIFAR100)
LAYOUT = "DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image>"


def load_dataset(name, data_dir, img_size, device, num_workers=0, memory_gb=None):
    """-> dict(train=(images, labels), test=(images, labels), classes, mean, std, fingerprint) on
    the device. A folder whose uint8 copy exceeds memory_gb (default: a quarter of the device's
    memory, or of the RAM off CUDA) stays an Images dataset that streams from disk."""
    device = torch.device(device)
    if memory_gb is None:
        memory = torch.cuda.get_device_properties(device).total_memory if device.type == 'cuda' \
            else os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
        memory_gb = memory / 4e9
    if name in CIFAR:
        train, test, classes = cifar(name, data_dir)
        listing = torch.cat([train[1], test[1]]).numpy().tobytes()  # torchvision md5-checks CIFAR
    else:  # Tiny-ImageNet's 64 px are kept and resized on the device, as CIFAR's 32 px are
        root = os.path.join(data_dir, 'tinyimagenet') if name == 'tinyimagenet' else data_dir
        if name == 'tinyimagenet' and not os.path.isdir(root):
            raise UserError(f"no Tiny-ImageNet at {root}: run python prepare.py tinyimagenet "
                            f"{data_dir} once (it sorts tiny-imagenet-200.zip into class folders)")
        train, test, classes, listing = folder(root, 64 if name == 'tinyimagenet' else img_size,
                                               memory_gb, num_workers)
    stored = 'streamed from disk' if isinstance(train[0], Images) else \
        f"stored {train[0].shape[-1]}x{train[0].shape[-1]} on {device}"
    print(f"{name}: {len(train[1])} train / {len(test[1])} test images, {len(classes)} classes; "
          f"{stored}, trained at {img_size}x{img_size}")
    fingerprint = dict(classes=list(classes), train=len(train[1]), test=len(test[1]),
                       files=hashlib.sha256(listing).hexdigest()[:16])  # the run's data
    to = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in DATASETS[name])
    return dict(train=(to(train[0]), to(train[1])), test=(to(test[0]), to(test[1])),
                classes=list(classes), mean=mean, std=std, fingerprint=fingerprint)


def cifar(name, data_dir):
    """CIFAR-10/100 via torchvision, downloaded into data_dir once -> (train, test, class names),
    each split (uint8 images (N, 3, 32, 32), labels)."""
    cls = CIFAR[name]
    try:
        splits = [cls(data_dir, train=train, download=True) for train in (True, False)]
    except (OSError, RuntimeError) as e:  # offline: urllib's URLError is an OSError
        raise UserError(f"cannot get {name} into {data_dir} ({str(e)[:100]}); offline? put "
                        f"{cls.filename} (from {cls.url}) into {data_dir}") from None
    tensors = [(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(),  # NHWC -> NCHW
                torch.tensor(s.targets)) for s in splits]
    return tensors[0], tensors[1], splits[0].classes


# ----------------------------------------------------------------------------- image folders
def folder(root, side, memory_gb, num_workers):
    """root/train, root/val -> (train, test, classes, listing): each split (uint8 images (N, 3,
    side, side), or an Images dataset to stream; labels); listing: relative paths, sizes, labels."""
    (train, classes), (val, val_classes) = scan(f"{root}/train"), scan(f"{root}/val")
    if val_classes != classes:
        raise UserError(f"{root}: train and val hold other classes; expected {LAYOUT}")
    stream = (len(train) + len(val)) * 3 * side * side / 1e9 > memory_gb
    splits = [(Images(s, side) if stream else decode_all(Images(s, side), num_workers),
               torch.tensor([k for _, k in s])) for s in (train, val)]
    listing = ''.join(f"{os.path.relpath(p, root)}\t{os.path.getsize(p)}\t{k}\n"
                      for p, k in train + val).encode('utf-8', 'surrogateescape')
    return splits[0], splits[1], classes, listing


def scan(split_dir):
    """split_dir/<class>/**/<image> -> ([(path, class index)], classes): torchvision's scan."""
    try:
        classes, index = find_classes(split_dir)
        return make_dataset(split_dir, index, IMG_EXTENSIONS), classes
    except OSError as e:  # no such folder, no class folder in it, a class without images
        raise UserError(f"{split_dir}: {e.strerror or e}; expected {LAYOUT}") from None


class Images(torch.utils.data.Dataset):
    """(path, label) samples -> (uint8 (3, side, side), '') each, or (zeros, why) for a file that
    cannot be decoded: the main process names it (a worker's exception is a page, not a line)."""

    def __init__(self, samples, side):
        self.samples, self.side = samples, side

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        try:
            return decode(self.samples[i][0], self.side), ''
        except Exception as e:  # OSError, SyntaxError, DecompressionBombError...
            why = f"{type(e).__name__}: {str(e)[:120]}"
            return torch.zeros(3, self.side, self.side, dtype=torch.uint8), why


def decode(path, side):
    """An image file -> uint8 (3, side, side): RGB, shorter side resized to side, central square."""
    with Image.open(path) as img:
        img = TF.resize(img.convert('RGB'), side, interpolation=TF.InterpolationMode.BICUBIC)
    return TF.pil_to_tensor(TF.center_crop(img, side))


def decode_all(images, num_workers):
    """Every image of an Images dataset -> uint8 (N, 3, s, s); says how far it got every 10 s."""
    loader = DataLoader(images, batch_size=256, num_workers=num_workers,
                        worker_init_fn=quiet_worker)
    out, start, shown = [], time.time(), time.time()
    for x, whys in loader:
        named(images, range(256 * len(out), 256 * len(out) + len(whys)), whys)
        out.append(x)
        if time.time() - shown > 10:
            shown, done = time.time(), 256 * len(out)
            print(f"decoded {done}/{len(images)} images ({done / (shown - start):.0f} images/s)")
    return torch.cat(out)


def named(images, indices, whys, then=''):
    """Names the first of these files that could not be decoded, if one could not."""
    for i, why in zip(indices, whys):
        if why:
            raise UserError(f"cannot decode {images.samples[i][0]} ({why}){then}")


def quiet_worker(worker_id):
    """A decoding worker leaves Ctrl-C and SIGUSR1 (a terminal and Slurm signal every process of
    the job) to the main process, which stops after its step; SIGTERM ends it as usual."""
    for s in (signal.SIGINT, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
    """d with a seeded, class-balanced subset of n images of one split (all, if it has no more)."""
    x, y = d[split]
    if n >= len(y):
        print(f"{flag} {n}: the {split} split holds {len(y)} images, all of them used")
        return d
    idx = balanced_subset(y, n, seed)
    per_class = torch.bincount(y.cpu()[idx], minlength=len(d['classes']))
    print(f"a seeded, class-balanced subset (seed {seed}): {n} of the {len(y)} {split} images, "
          f"{int(per_class.min())}-{int(per_class.max())} of each class")
    x = x[idx.to(x.device)] if isinstance(x, torch.Tensor) else \
        Images([x.samples[i] for i in idx.tolist()], x.side)  # a streamed folder: its samples
    return dict(d, **{split: (x, y[idx.to(y.device)])})


# ----------------------------------------------------------------------------- batches
def batches(images, labels, order, num_workers=0):
    """Yields (uint8 images (B, 3, h, w) on the device, labels (B,)) for each CPU index tensor."""
    device = labels.device
    on_device = torch.cat(order).to(device).split([len(i) for i in order])  # one copy per pass
    if isinstance(images, torch.Tensor):  # already on the device: a gather per batch, no host sync
        yield from ((images[idx], labels[idx]) for idx in on_device)
        return
    # a folder too large for memory: workers decode, pinned memory copies asynchronously
    # its own generator: a DataLoader draws a seed, which must not move the run's seeded RNG
    loader = DataLoader(images, batch_sampler=[i.tolist() for i in order], num_workers=num_workers,
                        pin_memory=device.type == 'cuda', worker_init_fn=quiet_worker,
                        generator=torch.Generator())
    for (x, whys), idx, cpu_idx in zip(loader, on_device, order):
        named(images, cpu_idx.tolist(), whys, ": put it back as it was and run the same command "
              "with --init_from resume (or --auto_resume True); ckpt.pt keeps the last checkpoint")
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
    """uint8 (B, 3, h, w) on the device -> normalized float (B, 3, img_size, img_size). 'rrc':
    RandomResizedCrop (scale 0.2-1, ratio 3/4-4/3) + flip, the paper's; 'crop': 4-pixel shifts +
    flip; 'none', 'eval': a bicubic resize (the identity for a folder, stored at img_size). The
    augmented images go through one grid_sample, each with its own affine map from output to
    input coordinates (both in [-1, 1]): x_in = sx * x_out + tx, y_in = sy * y_out + ty."""
    if aug in ('none', 'eval'):
        x = F.interpolate(images.float() / 255, size=(img_size, img_size), mode='bicubic',
                          align_corners=False, antialias=True).clamp(0, 1)
        return (x - mean) / std
    B, dev = images.size(0), images.device
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    flip = torch.where(torch.rand(B, device=dev) < 0.5, -1.0, 1.0)  # sx < 0 mirrors
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
    grid = F.affine_grid(theta, [B, 3, img_size, img_size], align_corners=False)  # (B, S, S, 2)
    x = F.grid_sample(images.float() / 255, grid, mode='bicubic', padding_mode='zeros',
                      align_corners=False)
    return (x - mean) / std
