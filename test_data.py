"""data.py and prepare.py: datasets on the device, image folders (kept or streamed), the data's
fingerprint, batches, augmentation on the device, Tiny-ImageNet's one-time preparation."""
import io
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import bridge
import data
import prepare
from configurator import UserError
from conftest import TINY, make_folder


def test_folder_in_memory_and_streamed_give_the_same_batches(folder):
    a = data.load_dataset('folder', folder, 16, 'cpu', 2, memory_gb=1.0)
    b = data.load_dataset('folder', folder, 16, 'cpu', 2, memory_gb=0.0)
    assert isinstance(a['train'][0], torch.Tensor) and isinstance(b['train'][0], data.Images)
    assert a['train'][0].shape == (128, 3, 16, 16) and a['train'][0].dtype == torch.uint8
    assert a['classes'] == ['class0', 'class1', 'class2', 'class3'] and torch.equal(a['test'][1], b['test'][1])
    assert a['fingerprint'] == b['fingerprint'] and a['fingerprint']['train'] == 128
    batches_a = data.train_batches(*a['train'], 24, start=3, seed=5, num_workers=2)
    batches_b = data.train_batches(*b['train'], 24, start=3, seed=5, num_workers=2)
    for _ in range(6):  # across an epoch's end
        (xa, ya), (xb, yb) = next(batches_a), next(batches_b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x, y = a['train'][0].float(), a['train'][1]  # the red class is red: images come with their labels
    assert (x[y == 0, 0].mean() > 150) and (x[y == 0, 1].mean() < 90)


def test_train_batches_are_epochs_sharded_and_resumable():
    images, labels = torch.arange(50).view(50, 1, 1, 1).expand(50, 3, 2, 2).to(torch.uint8), torch.arange(50)
    it = data.train_batches(images, labels, 8, seed=0)
    epoch0 = torch.cat([next(it)[1] for _ in range(6)])                      # 6 batches of 8 = 48 of 50
    assert len(set(epoch0.tolist())) == 48
    epoch1 = torch.cat([next(it)[1] for _ in range(6)])
    assert not torch.equal(epoch0, epoch1)                                   # a fresh permutation each epoch
    later = data.train_batches(images, labels, 8, start=7, seed=0)           # resume at micro-batch 7
    assert torch.equal(next(later)[1], epoch1[8:16])
    x, y = next(data.train_batches(images, labels, 8, seed=0))
    assert torch.equal(x[:, 0, 0, 0].long(), y)                              # images and labels stay paired
    shards = [set(torch.cat([b[1] for b, _ in zip(data.train_batches(images, labels, 8, seed=0, rank=r, world=2),
                                                  range(3))]).tolist()) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 24 and not shards[0] & shards[1]
    eval_batches = [b for r in range(3) for b in data.eval_batches(images, labels, 7, rank=r, world=3)]
    assert {len(y) for _, y in eval_batches} == {7}                         # one shape: one compiled graph
    evaluated = torch.cat([y for _, y in eval_batches])
    assert sorted(evaluated[evaluated >= 0].tolist()) == list(range(50))     # eval covers every example once
    assert (evaluated == -1).sum() == 4 + 4 + 5  # 17, 17, 16 examples a rank, padded to 21: labelled -1


def test_augment_crop_is_a_pixel_shift_or_its_mirror():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1) / 255  # normalization that undoes /255
    out = data.augment(x, 'crop', 12, zero, one)
    padded = torch.nn.functional.pad(x.float(), (4, 4, 4, 4))
    found = set()
    for b in range(16):
        views = {(dy, dx, f): padded[b, :, 4 + dy:16 + dy, 4 + dx:16 + dx] for dy in range(-4, 5)
                 for dx in range(-4, 5) for f in (0, 1)}
        views = {k: v.flip(-1) if k[2] else v for k, v in views.items()}
        match = [k for k, v in views.items() if (v - out[b]).abs().max() < 1e-3]
        assert match, f'image {b} is not a shifted (mirrored) copy'
        found.add(match[0][2])
    assert found == {0, 1}                                                   # flipped and unflipped occur
    torch.testing.assert_close(data.augment(x, 'none', 12, zero, one), x.float(), atol=1e-3, rtol=0)  # itself


def test_augment_rrc_crops_scales_and_flips():
    # a horizontal ramp 0..255: a crop of area fraction >= 0.2 spans a sub-range, a flip reverses the slope
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(64, 3, 32, 32).contiguous()
    torch.manual_seed(0)
    out = data.augment(ramp, 'rrc', 24, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1) / 255)
    assert out.shape == (64, 3, 24, 24)
    slope = out[:, 0, 12, -3] - out[:, 0, 12, 2]
    assert (slope > 0).sum() > 15 and (slope < 0).sum() > 15                # about half mirrored
    width = slope.abs() / 255 * 24 / 19                                      # the fraction of the side spanned
    assert width.min() > 0.15 and width.max() <= 1.05 and width.std() > 0.1  # varied crops, never beyond


def test_cifar_comes_from_torchvision_kept_at_32_px(tmp_path, monkeypatch, capsys):
    class FakeCIFAR:  # torchvision's interface: .data (N, 32, 32, 3) uint8, .targets, .classes
        url, filename = 'https://example/cifar.tar.gz', 'cifar.tar.gz'

        def __init__(self, root, train, download):
            n = 20 if train else 10
            self.data = (torch.arange(n).view(n, 1, 1, 1) * torch.ones(n, 32, 32, 3)).to(torch.uint8).numpy()
            self.targets, self.classes = [i % 10 for i in range(n)], [str(i) for i in range(10)]
    monkeypatch.setitem(data.CIFAR, 'cifar10', FakeCIFAR)
    d = data.load_dataset('cifar10', str(tmp_path), 224, 'cpu')
    assert d['train'][0].shape == (20, 3, 32, 32) and d['train'][0][7].eq(7).all()
    assert d['test'][1].tolist() == list(range(10))
    torch.testing.assert_close(d['mean'].flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert 'stored 32x32 on cpu, trained at 224x224' in capsys.readouterr().out
    monkeypatch.setitem(data.CIFAR, 'cifar10', torchvision.datasets.CIFAR10)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, 'url', 'http://127.0.0.1:9/cifar-10-python.tar.gz')
    with pytest.raises(UserError, match=r'cannot get cifar10 into .*offline\? put cifar-10-python.tar.gz'):
        data.load_dataset('cifar10', str(tmp_path / 'none'), 224, 'cpu')


def test_folder_images_are_their_central_square_in_rgb_whatever_their_size_and_mode(tmp_path):
    root = make_folder(tmp_path / 'f', n_classes=2, n_train=4, n_val=2, size=8)
    wide = np.zeros((12, 36, 3), np.uint8)
    wide[:, 12:24] = (10, 200, 30)  # the central square is green, the sides black
    Image.fromarray(wide).save(tmp_path / 'f' / 'train' / 'class0' / 'wide.png')
    Image.fromarray(np.full((8, 8), 77, np.uint8), mode='L').save(tmp_path / 'f' / 'train' / 'class1' / 'grey.png')
    colours = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode='P')
    palette.putpalette(colours.flatten().tolist())
    palette.save(tmp_path / 'f' / 'val' / 'class1' / 'palette.png')
    d = data.load_dataset('folder', root, 12, 'cpu')
    assert d['train'][0].shape == (10, 3, 12, 12) and d['test'][0].shape == (5, 3, 12, 12)
    green = data.decode(str(tmp_path / 'f' / 'train' / 'class0' / 'wide.png'), 12)
    assert green.shape == (3, 12, 12) and green[1].float().mean() > 190 and green[0].float().mean() < 20
    assert data.decode(str(tmp_path / 'f' / 'train' / 'class1' / 'grey.png'), 8).eq(77).all()
    rgb = data.decode(str(tmp_path / 'f' / 'val' / 'class1' / 'palette.png'), 8)
    assert torch.equal(rgb.permute(1, 2, 0), torch.from_numpy(colours[np.arange(64).reshape(8, 8)]))


def test_a_bad_image_is_named_when_it_is_met_and_the_run_resumes_once_it_is_back(tmp_path, capsys):
    root = make_folder(tmp_path / 'f', n_classes=2, n_train=16, n_val=4)
    path = tmp_path / 'f' / 'train' / 'class0' / '3.png'
    whole = path.read_bytes()
    path.write_bytes(whole[:60])  # the header is intact, the pixels are cut off
    with pytest.raises(UserError, match=r'cannot decode .*class0/3.png \(OSError: image file is truncated'):
        data.load_dataset('folder', root, 16, 'cpu')  # in memory: decoded at the start
    path.write_bytes(whole)
    args = ['--dataset', 'folder', '--data_dir', root, '--out_dir', str(tmp_path / 'r'), *TINY,
            '--batch_size', '8', '--max_iters', '12', '--eval_interval', '4']
    full = bridge.main([*args[:5], str(tmp_path / 'full'), *args[6:]])
    real = data.load_dataset
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(bridge, 'load_dataset', lambda *a: real(*a[:5], memory_gb=0.0))  # streamed
    try:
        real_decode = data.decode
        calls = []

        def breaks(p, side):  # the file breaks when training reaches its sixth image
            calls.append(p)
            if len(calls) == 6 * 8 + 1:
                path.write_bytes(whole[:60])
            return real_decode(p, side)
        monkeypatch.setattr(data, 'decode', breaks)
        with pytest.raises(UserError, match=r'cannot decode .*3.png .*: put it back as it was and run the same '
                                            r'command with --init_from resume'):
            bridge.main(args)
        monkeypatch.setattr(data, 'decode', real_decode)
        path.write_bytes(whole)
        resumed = bridge.main([*args, '--init_from', 'resume'])
    finally:
        monkeypatch.undo()
    assert resumed['test_loss'] == full['test_loss']  # it continued from its last checkpoint, exactly
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('full', 'r'))
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_the_fingerprint_is_the_listing_a_moved_folder_is_the_same_data_another_is_not(folder, tmp_path):
    a = data.load_dataset('folder', folder, 16, 'cpu')['fingerprint']
    moved = shutil.copytree(folder, tmp_path / 'moved')
    assert data.load_dataset('folder', str(moved), 16, 'cpu')['fingerprint'] == a  # relative paths
    other = make_folder(tmp_path / 'other', seed=1, noise=80)  # the same names, classes, counts, labels
    b = data.load_dataset('folder', other, 16, 'cpu')['fingerprint']
    assert {k for k in a if a[k] != b[k]} == {'files'}  # other sizes
    renamed = shutil.copytree(folder, tmp_path / 'renamed')
    os.rename(renamed / 'train' / 'class3' / '0.png', renamed / 'train' / 'class3' / 'x.png')
    assert data.load_dataset('folder', str(renamed), 16, 'cpu')['fingerprint']['files'] != a['files']


def test_folder_layout_mistakes_are_one_line(tmp_path):
    root = make_folder(tmp_path / 'f', n_classes=2, n_train=2, n_val=1)
    os.makedirs(tmp_path / 'f' / 'val' / 'class2')
    with pytest.raises(UserError, match=r'val: Found no valid file for the classes class2. Supported extensions are'):
        data.load_dataset('folder', root, 16, 'cpu')
    shutil.rmtree(tmp_path / 'f' / 'val')
    with pytest.raises(UserError, match=r'f/val: No such file or directory; expected DATA_DIR/train/<class>'):
        data.load_dataset('folder', root, 16, 'cpu')


def test_images_are_a_seeded_balanced_subset_of_every_class():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)  # sorted by class, as a folder is
    idx = data.balanced_subset(y, 30, seed=0)
    assert torch.bincount(y[idx]).tolist() == [10, 10, 10] and idx.tolist() == sorted(set(idx.tolist()))
    assert torch.equal(idx, data.balanced_subset(y, 30, seed=0))
    assert not torch.equal(idx, data.balanced_subset(y, 30, 1))
    assert torch.bincount(y[data.balanced_subset(y, 70, seed=0)]).tolist() == [25, 25, 20]  # class 2 runs out


def tiny_imagenet_zip(path, wnids=('n01443537', 'n01629819', 'n01641577'), n_train=6, n_val=3):
    """A small tiny-imagenet-200.zip in the distributed layout: train/<wnid>/images/*.JPEG with
    <wnid>_boxes.txt, val/images/*.JPEG with val_annotations.txt, wnids.txt. Class k is a colour."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]

    def jpeg(k, seed):
        rng = np.random.default_rng(seed)
        pixels = np.clip(np.array(colours[k]) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format='JPEG', quality=95)
        return buf.getvalue()
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('tiny-imagenet-200/wnids.txt', '\n'.join(wnids) + '\n')
        for k, w in enumerate(wnids):
            z.writestr(f'tiny-imagenet-200/train/{w}/{w}_boxes.txt', '')
            for i in range(n_train):
                z.writestr(f'tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG', jpeg(k, 100 * k + i))
        order = [(i, k) for i, k in enumerate([k for k in range(len(wnids)) for _ in range(n_val)][::-1])]
        z.writestr('tiny-imagenet-200/val/val_annotations.txt',
                   ''.join(f'val_{i}.JPEG\t{wnids[k]}\t0\t0\t63\t63\n' for i, k in order))
        for i, k in order:
            z.writestr(f'tiny-imagenet-200/val/images/val_{i}.JPEG', jpeg(k, 1000 + i))
    return path


def test_tiny_imagenet_is_prepared_once_from_its_zip_and_trains(tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match=r'no Tiny-ImageNet at .*tinyimagenet: run python prepare.py tinyimagenet'):
        data.load_dataset('tinyimagenet', str(tmp_path), 16, 'cpu')
    monkeypatch.setattr(prepare, 'TINY_IMAGENET', 'http://127.0.0.1:9/tiny-imagenet-200.zip')  # offline
    with pytest.raises(UserError, match=r'cannot prepare Tiny-ImageNet in .*offline\? put tiny-imagenet-200.zip'):
        prepare.main(['tinyimagenet', str(tmp_path / 'none')])
    tiny_imagenet_zip(tmp_path / 'tiny-imagenet-200.zip')
    real = torchvision.datasets.utils.extract_archive

    def killed(archive, to):  # a part of the members, then the process is stopped
        with zipfile.ZipFile(archive) as z:
            z.extractall(to, members=z.namelist()[:10])
        raise KeyboardInterrupt
    monkeypatch.setattr(torchvision.datasets.utils, 'extract_archive', killed)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(['tinyimagenet', str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ['none', 'tiny-imagenet-200.zip']  # nothing to train on is left
    monkeypatch.setattr(torchvision.datasets.utils, 'extract_archive', real)
    prepare.main(['tinyimagenet', str(tmp_path)])
    d = data.load_dataset('tinyimagenet', str(tmp_path), 16, 'cpu')
    assert d['classes'] == ['n01443537', 'n01629819', 'n01641577']  # sorted wnids
    assert d['train'][0].shape == (18, 3, 64, 64) and d['test'][0].shape == (9, 3, 64, 64)  # kept at 64 px
    red_green_blue = [d['test'][0][d['test'][1] == k].float().mean((0, 2, 3)).argmax().item() for k in range(3)]
    assert red_green_blue == [0, 1, 2]  # each val image came with its own label, from val_annotations.txt
    result = bridge.main(['--dataset', 'tinyimagenet', '--data_dir', str(tmp_path), '--out_dir',
                          str(tmp_path / 'r'), *TINY, '--max_iters', '2', '--batch_size', '6'])
    assert result['iter'] == 2


def test_prepare_check_names_every_bad_image_file(folder, tmp_path, capsys):
    copy = shutil.copytree(folder, tmp_path / 'f')
    prepare.main(['check', str(copy)])
    assert 'all 192 image files decode' in capsys.readouterr().out
    (copy / 'train' / 'class0' / '0.png').write_bytes(b'not a png')
    (copy / 'val' / 'class1' / '2.png').write_bytes(b'')
    with pytest.raises(UserError, match=r'^2 of the 192 image files under .* cannot be decoded$'):
        prepare.main(['check', str(copy)])
    out = capsys.readouterr().out
    assert 'class0/0.png: UnidentifiedImageError' in out and 'class1/2.png: UnidentifiedImageError' in out
