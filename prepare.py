"""
One-time data steps, off a run's path (as nanoGPT's data/*/prepare.py scripts):

  python prepare.py digits DATA_DIR        # scikit-learn's 8x8 digits as an image folder, offline
  python prepare.py tinyimagenet DATA_DIR  # Tiny-ImageNet in DATA_DIR/tinyimagenet, class folders
  python prepare.py check DIR              # decode every image under DIR; name every bad file

tinyimagenet takes tiny-imagenet-200.zip as distributed (downloaded into DATA_DIR if missing) or
its extracted tiny-imagenet-200/, and sorts val's images into class folders by
val_annotations.txt; then `bridge.py --dataset tinyimagenet --data_dir DATA_DIR` trains on it. It
builds in a temporary folder renamed when whole: a killed preparation leaves nothing trained on.
"""
import os
import shutil
import tempfile

import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets.folder import IMG_EXTENSIONS

from configurator import UserError, run_cli
from data import Images

TINY_IMAGENET = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'  # its official address


def digits(data_dir):
    """scikit-learn's 1,797 handwritten 8x8 digits as DATA_DIR/{train,val}/<digit>/<i>.png, a fifth
    of them val: ten classes on any machine, without a download (the README's quick start)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("prepare.py digits needs scikit-learn: pip install scikit-learn") from None
    found = load_digits()
    for i, (img, label) in enumerate(zip(found.images, found.target)):
        folder = os.path.join(data_dir, 'val' if i % 5 == 0 else 'train', str(label))
        os.makedirs(folder, exist_ok=True)
        pixels = Image.fromarray((img * 255 / 16).astype('uint8')).convert('RGB')  # 0..16 -> 0..255
        pixels.save(os.path.join(folder, f'{i}.png'))
    print(f"wrote {len(found.images)} digits into {data_dir}/train and {data_dir}/val")


def tiny_imagenet(data_dir):
    """data_dir/tinyimagenet/{train,val}/<wnid>/*.JPEG from the zip or its extracted folder."""
    root = os.path.join(data_dir, 'tinyimagenet')
    if os.path.isdir(root):
        return print(f"{root} is there already")
    src = os.path.join(data_dir, 'tiny-imagenet-200')
    archive = src + '.zip'
    os.makedirs(data_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.tinyimagenet.', dir=data_dir)
    try:
        if not os.path.isdir(src):
            if not os.path.isfile(archive):
                torchvision.datasets.utils.download_url(TINY_IMAGENET, data_dir)
            print(f"extracting {archive}")
            torchvision.datasets.utils.extract_archive(archive, tmp)
            src = os.path.join(tmp, 'tiny-imagenet-200')
        place = shutil.move if src.startswith(tmp) else shutil.copy2  # the user's folder stays
        with open(f"{src}/val/val_annotations.txt") as f:  # file, wnid, box
            rows = [line.split() for line in f]
        moves = [(f"val/images/{row[0]}", f"val/{row[1]}/{row[0]}") for row in rows]
        for w in os.listdir(f"{src}/train"):
            moves += [(f"train/{w}/images/{name}", f"train/{w}/{name}")
                      for name in os.listdir(f"{src}/train/{w}/images")]
        for a, b in moves:
            os.makedirs(os.path.dirname(f"{tmp}/out/{b}"), exist_ok=True)
            place(f"{src}/{a}", f"{tmp}/out/{b}")
        os.rename(f"{tmp}/out", root)
    except Exception as e:  # offline, a damaged zip, another layout: one line, nothing left
        raise UserError(f"cannot prepare Tiny-ImageNet in {data_dir} ({type(e).__name__}: "
                        f"{str(e)[:120]}); offline? put tiny-imagenet-200.zip (from "
                        f"{TINY_IMAGENET}) or its extracted tiny-imagenet-200/ there") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {root}: {len(moves)} images in class folders")


def check(top):
    """Decodes every image file under top, as training would, on all cores; exit 1 on a bad one."""
    samples = [(os.path.join(folder, f), 0) for folder, _, files in sorted(os.walk(top))
               for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
    print(f"{top}: decoding {len(samples)} image files")
    whys = [w for _, batch in DataLoader(Images(samples, 8), batch_size=64,
                                         num_workers=min(8, os.cpu_count() or 1)) for w in batch]
    bad = [(path, why) for (path, _), why in zip(samples, whys) if why]
    for path, why in bad:
        print(f"{path}: {why}")
    if bad or not samples:
        raise UserError(f"{len(bad)} of the {len(samples)} image files under {top} cannot be "
                        f"decoded" if samples else f"no image files under {top}")
    print(f"all {len(samples)} image files decode")


def main(argv):
    steps = dict(digits=digits, tinyimagenet=tiny_imagenet, check=check)
    if len(argv) != 2 or argv[0] not in steps:
        raise UserError("usage: python prepare.py digits DIR | tinyimagenet DIR | check DIR")
    steps[argv[0]](argv[1])


if __name__ == '__main__':
    run_cli(main)
