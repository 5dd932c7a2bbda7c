"""
Images for bridge training: datasets kept on the training device as uint8 and augmented there a batch at a
time (as airbench does), and the paper's random labels.

  load_dataset('cifar10', 'data', img_size=224, device='cuda')   -> train/test images and labels on the GPU
  random_labels(labels, 10, fraction=1.0, seed=0)                -> the bridge stage's labels
  train_batches(...) / eval_batches(...)                         -> (uint8 images, labels) batches
  augment(images, 'rrc', 224, mean, std)                         -> normalized float images for the model

Folders too large for memory (ImageNet) stream through a DataLoader instead; either way a batch reaches
`augment` as uint8 on the device, so every dataset gets the same GPU augmentation.
"""
import math
import os
import urllib.error

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from model import UserError

# per-channel mean and std: the CIFAR values of the paper's code; ImageNet's for image folders
NORMALIZE = {'cifar': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
             'folder': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
CIFAR = {'cifar10': torchvision.datasets.CIFAR10, 'cifar100': torchvision.datasets.CIFAR100}
LAYOUT = "DATA_DIR/train/<class>/<image>, DATA_DIR/val/<class>/<image> (same class folders in both)"


def cifar(name, data_dir, train):
    """CIFAR-10/100 via torchvision, downloaded into data_dir once -> uint8 images (N, 3, 32, 32), labels (N,)."""
    cls = CIFAR[name]
    try:
        ds = cls(data_dir, train=train, download=True)  # checks the files, downloads only if they are missing
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise UserError(f"cannot get {name} into {data_dir} ({str(e).splitlines()[0][:120]}); offline? put {cls.filename} "
                        f"(from {cls.url}) or its extracted {cls.base_folder}/ into {data_dir}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return images, torch.tensor(ds.targets), ds.classes


def image_folder(data_dir, split, img_size, memory_gb, num_workers):
    """DATA_DIR/<split>/<class>/* -> (uint8 images (N, 3, S, S) or, when too large for memory, the dataset
    itself to stream), labels (N,), class names. Images are resized (shorter side) and center-cropped to
    S = min(img_size, the first image's shorter side): small images are not upsampled before augmentation."""
    root = os.path.join(data_dir, split)
    try:
        ds = torchvision.datasets.ImageFolder(root)
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"no image folder at {root} ({str(e).splitlines()[0][:120]}); expected {LAYOUT}") from None
    side = min(img_size, *ds.loader(ds.samples[0][0]).size)
    ds.transform = transforms.Compose([transforms.Resize(side, interpolation=transforms.InterpolationMode.BICUBIC),
                                       transforms.CenterCrop(side), transforms.PILToTensor()])
    labels, gb = torch.tensor(ds.targets), len(ds) * 3 * side * side / 1e9
    if gb > memory_gb:
        print(f"{root}: {len(ds)} images at {side}x{side} ({gb:.1f} GB > memory_gb {memory_gb}): streaming from disk")
        return ds, labels, ds.classes
    print(f"{root}: decoding {len(ds)} images at {side}x{side} into memory ({gb:.2f} GB)")
    loader = DataLoader(ds, batch_size=256, num_workers=num_workers)
    return torch.cat([x for x, _ in loader]), labels, ds.classes


def load_dataset(name, data_dir, img_size, device, memory_gb=16.0, num_workers=4):
    """-> dict(train=(images, labels), test=(images, labels), classes, mean, std), all on the device
    (images stay a streaming dataset for folders larger than memory_gb)."""
    if name in CIFAR:
        (xtr, ytr, classes), (xte, yte, _) = cifar(name, data_dir, True), cifar(name, data_dir, False)
    elif name == 'folder':
        (xtr, ytr, classes), (xte, yte, val_classes) = (image_folder(data_dir, s, img_size, memory_gb, num_workers)
                                                        for s in ('train', 'val'))
        if val_classes != classes:
            raise UserError(f"{data_dir}: train and val hold different class folders; expected {LAYOUT}")
    else:
        raise UserError(f"unknown dataset '{name}': use cifar10, cifar100 or folder")
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in NORMALIZE['folder' if name == 'folder' else 'cifar'])
    on_device = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x
    shape = 'x'.join(map(str, xtr.shape[-2:])) if isinstance(xtr, torch.Tensor) else 'streamed'
    print(f"{name}: {len(ytr)} train / {len(yte)} test images ({shape}), {len(classes)} classes, on {device}")
    return dict(train=(on_device(xtr), ytr.to(device)), test=(on_device(xte), yte.to(device)),
                classes=classes, mean=mean, std=std)


def random_labels(labels, n_classes, fraction, seed, wrong=False):
    """The bridge stage's labels: a seeded, fixed choice of round(fraction * N) training examples gets a label
    drawn uniformly from all classes, independent of the true one (so the stage needs no labels at all).
    wrong=True draws from the other n_classes - 1 classes instead, as the first author's code does
    (every chosen label is then guaranteed wrong). Same seed -> same labels, on every rank."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"random label fraction {fraction} is not in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    chosen = torch.randperm(len(labels), generator=g)[:round(fraction * len(labels))]
    new = labels.clone()
    if wrong:  # true + 1..C-1 (mod C): uniform over the other classes
        new[chosen] = (labels[chosen] + torch.randint(1, n_classes, (len(chosen),), generator=g)) % n_classes
    else:
        new[chosen] = torch.randint(0, n_classes, (len(chosen),), generator=g)
    return new


def batches(images, labels, order, num_workers=0):
    """Yields (uint8 images (B, 3, h, w) on the device, labels (B,)) for each 1-D CPU index tensor in order."""
    device = labels.device
    on_device = torch.cat(order).to(device).split([len(i) for i in order])  # one copy per pass, not one per step
    if isinstance(images, torch.Tensor):  # already on the device: a gather per batch, no host sync
        for idx in on_device:
            yield images[idx], labels[idx]
    else:  # a folder too large for memory: DataLoader workers decode, pinned memory copies asynchronously
        loader = DataLoader(images, batch_sampler=[i.tolist() for i in order], num_workers=num_workers,
                            pin_memory=device.type == 'cuda')
        for (x, _), idx in zip(loader, on_device):
            yield x.to(device, non_blocking=True), labels[idx]


def train_batches(images, labels, batch_size, start=0, seed=0, rank=0, world=1, num_workers=0):
    """Micro-batches forever, from micro-batch number `start` on. Each epoch is a seeded permutation, the same
    on every rank; rank r takes every world-th example of it. Position = (seed, start) only, so a resumed run
    sees exactly the batches an uninterrupted one would."""
    per_epoch = len(labels) // (batch_size * world)
    if per_epoch == 0:
        raise UserError(f"batch_size {batch_size} x {world} processes exceeds the {len(labels)} training images")
    epoch, i = divmod(start, per_epoch)
    while True:
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1_000_003 * seed + epoch))
        order = order[rank::world][:per_epoch * batch_size].view(per_epoch, batch_size)  # (steps, B)
        yield from batches(images, labels, list(order[i:]), num_workers)
        epoch, i = epoch + 1, 0


def eval_batches(images, labels, batch_size, rank=0, world=1, num_workers=0):
    """The whole split once, in order; rank r takes every world-th example."""
    return batches(images, labels, list(torch.arange(rank, len(labels), world).split(batch_size)), num_workers)


def augment(images, aug, img_size, mean, std):
    """uint8 (B, 3, h, w) on the device -> normalized float (B, 3, img_size, img_size), one grid_sample per batch.
    aug: 'rrc' = RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3) + horizontal flip (the paper's code), 'crop' =
    random crop with 4 pixels of zero padding + flip (the CIFAR classic), 'none'/'eval' = resize only.
    Each image gets its own affine map from output to input coordinates (both in [-1, 1]):
    x_in = sx * x_out + tx, y_in = sy * y_out + ty; a negative sx flips. Randomness: the default generator."""
    B, dev = images.size(0), images.device
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if aug in ('rrc', 'crop'):
        flip = torch.where(torch.rand(B, device=dev) < 0.5, -1.0, 1.0)
        if aug == 'rrc':  # crop area and aspect ratio as torchvision samples them; an oversize side is clamped
            area = torch.empty(B, device=dev).uniform_(0.2, 1.0)
            ratio = torch.empty(B, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
            w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)  # fractions of the side
            theta[:, 0, 0], theta[:, 1, 1] = w * flip, h
            theta[:, 0, 2] = (torch.rand(B, device=dev) * 2 - 1) * (1 - w)  # crop center, inside the image
            theta[:, 1, 2] = (torch.rand(B, device=dev) * 2 - 1) * (1 - h)
        else:  # shift by -4..4 whole source pixels; outside the image is black (zero padding)
            shift = torch.randint(-4, 5, (B, 2), device=dev).float()
            theta[:, 0, 0] = flip
            theta[:, 0, 2], theta[:, 1, 2] = 2 * shift[:, 0] / images.size(3), 2 * shift[:, 1] / images.size(2)
    elif aug not in ('none', 'eval'):
        raise UserError(f"unknown aug '{aug}': use rrc, crop or none")
    x = images.float() / 255
    grid = F.affine_grid(theta, [B, 3, img_size, img_size], align_corners=False)  # (B, img, img, 2)
    x = F.grid_sample(x, grid, mode='bicubic', padding_mode='zeros', align_corners=False)
    return (x - mean) / std
