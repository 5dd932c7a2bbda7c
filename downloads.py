"""
What comes from the network, fetched once and read from where it lies: OpenAI's GPT-2 weights (into
torch.hub's cache), CIFAR-10/100 (torchvision) and Tiny-ImageNet (its zip, in the layout it is
distributed in), each into --data_dir. Every failure is one line that says what to put where when
the machine is offline. data.py and weights.py import it only when a run needs one of these: a run
on an image folder from scratch never reads this file.

  download(name, data_dir)      -> OpenAI's weights of that name, or the dataset, fetched if missing
  cifar(name, data_dir, train)  -> uint8 (N, 3, 32, 32), labels, class names, a pixel hash
  tiny_imagenet(data_dir)       -> (root, (train samples, classes), (val samples, classes))
"""
import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import zipfile

import torch
import torchvision

from configurator import UserError

CIFAR = {'cifar10': torchvision.datasets.CIFAR10, 'cifar100': torchvision.datasets.CIFAR100}
TINY_IMAGENET = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'  # its official address
WEIGHTS_URL = 'https://huggingface.co/openai-community/{name}/resolve/main/model.safetensors'


def download(name, data_dir):
    """A dataset of --dataset (into data_dir), else OpenAI's weights of that name (gpt2...): fetched
    unless they are there already."""
    if name == 'tinyimagenet':
        return fetch_tiny_imagenet(data_dir)
    if name in CIFAR:
        return fetch_cifar(name, data_dir)
    return gpt2_weights(name)


# ----------------------------------------------------------------------------- OpenAI's weights
def gpt2_weights(name):
    """OpenAI's weights of an official size, downloaded once into torch.hub's cache -> the path."""
    path = os.path.join(torch.hub.get_dir(), 'gpt2', f'{name}.safetensors')
    if not os.path.exists(path):
        url = WEIGHTS_URL.format(name=name)
        print(f"downloading {name} weights from {url} to {path}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, path, progress=True)  # a temp file, then a rename
        except (urllib.error.URLError, OSError) as e:
            raise UserError(f"could not download {name} from {url} ({e}); offline? download "
                            f"model.safetensors elsewhere and give its path instead of '{name}' "
                            f"(--init_from PATH; analysis.py and sample.py take it as a source), "
                            f"or put it at {path}") from None
    return path


# ----------------------------------------------------------------------------- CIFAR-10/100
def cifar(name, data_dir, train):
    """CIFAR-10/100 via torchvision, downloaded into data_dir once -> uint8 (N, 3, 32, 32), labels,
    class names, a hash of the pixels."""
    cls = fetch_cifar(name, data_dir)
    try:
        ds = cls(data_dir, train=train, download=False)  # checks the files' md5 once more
    except (OSError, RuntimeError) as e:
        raise UserError(cannot_get_cifar(name, data_dir, e)) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> NCHW
    return images, torch.tensor(ds.targets), ds.classes, hashlib.sha256(ds.data).hexdigest()


def fetch_cifar(name, data_dir):
    """CIFAR's batch files in data_dir, their md5s checked; downloaded and extracted there first
    when one is missing or damaged (what torchvision's download=True does, without loading a
    split) -> torchvision's dataset class."""
    cls = CIFAR[name]
    files = [(os.path.join(data_dir, cls.base_folder, f), md5) for f, md5 in
             cls.train_list + cls.test_list]
    if all(torchvision.datasets.utils.check_integrity(f, md5) for f, md5 in files):
        return cls
    try:
        with fetching_into(data_dir):
            torchvision.datasets.utils.download_and_extract_archive(
                cls.url, data_dir, filename=cls.filename, md5=cls.tgz_md5)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise UserError(cannot_get_cifar(name, data_dir, e)) from None
    return cls


@contextlib.contextmanager
def fetching_into(data_dir):
    """A download into data_dir: a failed one (offline, say) leaves no empty folder it created."""
    existed = os.path.isdir(data_dir)
    try:
        yield
    except BaseException:
        if not existed and os.path.isdir(data_dir) and not os.listdir(data_dir):
            os.rmdir(data_dir)
        raise


def cannot_get_cifar(name, data_dir, e):
    """The line for CIFAR missing offline: what failed, which file to put where."""
    cls = CIFAR[name]
    return (f"cannot get {name} into {data_dir} ({str(e).splitlines()[0][:120]}); offline? put "
            f"{cls.filename} (from {cls.url}) or its extracted {cls.base_folder}/ into {data_dir}")


# ----------------------------------------------------------------------------- Tiny-ImageNet
def tiny_imagenet(data_dir):
    """Tiny-ImageNet as distributed (tiny-imagenet-200.zip, fetched into data_dir once): 200
    classes in sorted wnid order, named from words.txt; train/<wnid>/images/*.JPEG, and
    val/images/*.JPEG labelled by val/val_annotations.txt (file, wnid, box)."""
    root = fetch_tiny_imagenet(data_dir)
    archive = os.path.join(data_dir, 'tiny-imagenet-200.zip')
    if os.path.isfile(archive):  # here, once: harness.fetch fetches before this runs
        check_extracted(root, archive)
    try:
        wnids, classes = tiny_classes(root)
        index = {w: k for k, w in enumerate(wnids)}
        train = [(path, index[w]) for w in wnids for path in tiny_train_images(root, w)]
        val = tiny_val_images(root, index)
    except OSError as e:  # unreadable: name the file, not a traceback
        raise UserError(f"cannot read {e.filename} of Tiny-ImageNet: {e.strerror}") from None
    return root, (train, classes), (val, classes)


def tiny_layout(root, what):
    """The UserError of a Tiny-ImageNet folder that is not in its distributed layout."""
    return UserError(f"{root}: {what}; expected Tiny-ImageNet as distributed (wnids.txt, "
                     f"train/<wnid>/images/, val/images/ and val/val_annotations.txt): remove it, "
                     f"and the next run extracts tiny-imagenet-200.zip again")


def tiny_classes(root):
    """-> (the wnids of wnids.txt, sorted; their class names from words.txt, or the wnids)."""
    if not os.path.isfile(os.path.join(root, 'wnids.txt')):
        raise tiny_layout(root, 'no wnids.txt')
    with open(os.path.join(root, 'wnids.txt')) as f:
        wnids = sorted(f.read().split())
    if not wnids:
        raise tiny_layout(root, 'wnids.txt lists no classes')
    words = {}
    if os.path.isfile(os.path.join(root, 'words.txt')):
        with open(os.path.join(root, 'words.txt')) as f:
            words = dict(line.rstrip('\n').split('\t', 1) for line in f if '\t' in line)
    else:
        print(f"{root}: no words.txt, so the classes are named by their wnids")
    names = [words.get(w, w) for w in wnids]
    return wnids, [n if names.count(n) == 1 else f"{n} ({w})" for n, w in zip(names, wnids)]


def tiny_train_images(root, wnid):
    """The training images of one class, train/<wnid>/images/*, sorted (hidden files skipped)."""
    folder = os.path.join(root, 'train', wnid, 'images')
    if not os.path.isdir(folder):
        raise tiny_layout(root, f"class {wnid} of wnids.txt has no folder train/{wnid}/images")
    files = sorted(f for f in os.listdir(folder) if not f.startswith('.'))
    if not files:
        raise tiny_layout(root, f"train/{wnid}/images holds no images")
    return [os.path.join(folder, f) for f in files]


def tiny_val_images(root, index):
    """The validation images, labelled by val/val_annotations.txt (file, wnid, box; tabs or
    spaces), sorted by file; each annotated file must be there."""
    annotations = os.path.join(root, 'val', 'val_annotations.txt')
    if not os.path.isfile(annotations):
        raise tiny_layout(root, 'no val/val_annotations.txt')
    with open(annotations) as f:
        rows = sorted(line.split()[:2] for line in f if line.strip())
    val = []
    for row in rows:
        if len(row) < 2 or row[1] not in index:
            raise tiny_layout(root, f"val_annotations.txt: '{' '.join(row)}' does not name an "
                                    f"image and a wnid of wnids.txt")
        path = os.path.join(root, 'val', 'images', row[0])
        if not os.path.isfile(path):
            raise tiny_layout(root, f"val/images/{row[0]}, named in val_annotations.txt, is not "
                                    f"there")
        val.append((path, index[row[1]]))
    return val


def fetch_tiny_imagenet(data_dir):
    """data_dir/tiny-imagenet-200, extracted from its zip (downloaded there first if missing) into
    a temporary folder that is renamed once whole (tiny_imagenet checks a folder that was there)."""
    root, archive = (os.path.join(data_dir, n) for n in ('tiny-imagenet-200',
                                                          'tiny-imagenet-200.zip'))
    if os.path.isdir(root):
        return root
    try:
        if not os.path.isfile(archive):
            with fetching_into(data_dir):
                torchvision.datasets.utils.download_url(TINY_IMAGENET, data_dir)
        print(f"extracting {archive}")
        tmp = tempfile.mkdtemp(prefix='.tiny-imagenet-200.', dir=data_dir)
        try:
            torchvision.datasets.utils.extract_archive(archive, tmp)
            os.rename(os.path.join(tmp, 'tiny-imagenet-200'), root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except (urllib.error.URLError, OSError, RuntimeError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot get tinyimagenet into {data_dir} ({str(e).splitlines()[0][:120]})"
                        f"; offline? put tiny-imagenet-200.zip (from {TINY_IMAGENET}) or its "
                        f"extracted tiny-imagenet-200/ into {data_dir}") from None
    return root


def check_extracted(root, archive):
    """Every file that the zip lists is in root: a stopped extraction of an older version leaves a
    part of them, and is refused, not trained on."""
    try:
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if not n.endswith('/')]
    except (OSError, zipfile.BadZipFile):  # a damaged zip beside a whole folder: the folder counts
        return
    top = os.path.dirname(root)
    missing = [n for n in names if not os.path.exists(os.path.join(top, n))]
    if missing:
        raise tiny_layout(root, f"{len(missing)} of the {len(names)} files of "
                                f"{os.path.basename(archive)} are not in it ({missing[0]}...)")
