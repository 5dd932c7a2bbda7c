"""
The method's specification: random labels, freezing, the two stages and the hand-off, the schedule,
the loop, evaluation and exact resume. Offline, CPU, tiny models (conftest.py makes everything).
The other test files: test_model.py (GPT-2 itself), test_data.py, test_run.py (what a run
guarantees), test_tools.py (export, analysis, bench, lab).
"""
import re
import signal

import pytest
import torch

import bridge
import data
from configurator import Stopped, UserError, parse
from conftest import hf_gpt2, make_folder, metrics, run
from model import CONV1D, GPT, GPTConfig, freeze_spec


def bridge_help():
    from configurator import flags_of
    return '\n'.join(comment for _, comment in flags_of(vars(bridge)).values())


def tiny(n_layer=8):
    return GPT(GPTConfig(n_layer=n_layer, n_head=2, n_embd=32, vocab_size=0, n_classes=3, img_size=16,
                         patch_size=8))


# ---------------------------------------------------------------- random labels
def test_random_labels_are_seeded_fixed_and_uniform():
    true = torch.arange(10).repeat(1000)  # 10,000 examples, 10 classes
    a = data.random_labels(true, 10, 1.0, seed=0)
    assert torch.equal(a, data.random_labels(true, 10, 1.0, seed=0))        # same seed, same labels
    assert not torch.equal(a, data.random_labels(true, 10, 1.0, seed=1))
    counts = torch.bincount(a, minlength=10).float()
    assert counts.min() > 900 and counts.max() < 1100                       # uniform over all classes ...
    assert 0.08 < (a == true).float().mean() < 0.12                          # ... independent of the truth
    joint = torch.bincount(true * 10 + a, minlength=100).view(10, 10).float()
    assert joint.min() > 60 and joint.max() < 145                            # every (true, random) pair ~100 times
    for fraction in (0.0, 0.15, 0.3):
        changed = data.random_labels(true, 10, fraction, seed=0) != true
        assert abs(changed.float().mean() - fraction * 0.9) < 0.02           # 1/10 redrawn to the same class
    assert torch.equal(true, torch.arange(10).repeat(1000))                  # the input is not modified


def test_random_labels_wrong_mode_is_the_authors_always_wrong():
    true = torch.arange(10).repeat(500)
    w = data.random_labels(true, 10, 1.0, seed=0, wrong=True)
    assert (w != true).all()
    counts = torch.bincount(true * 10 + w, minlength=100).view(10, 10)
    assert counts.diagonal().eq(0).all() and (counts + torch.eye(10, dtype=torch.long) * 100).min() > 25


# ---------------------------------------------------------------- freezing: partial bridge training
@pytest.mark.parametrize('spec, frozen_blocks, frozen_parts', [
    ('0-5', {0, 1, 2, 3, 4}, {'wpe'}),              # the paper's partial bridge: wpe + blocks 0-4
    ('0-5,wpe', {0, 1, 2, 3, 4}, {'wpe'}),          # the same, said twice
    ('3', {3}, set()),
    ('2-4', {2, 3}, set()),                         # block 0 is not frozen: wpe trains
    ('0,2,4', {0, 2, 4}, {'wpe'}),
    ('6-8, head', {6, 7}, {'head'}),
    ('patch,ln_f', set(), {'patch', 'ln_f'}),
    ('all', set(range(8)), {'wpe', 'ln_f'}),
    ('none', set(), set()),
])
def test_freeze_specs(spec, frozen_blocks, frozen_parts):
    m = tiny()
    m.freeze('all')  # freeze() defines the whole frozen set: earlier calls leave no trace
    m.freeze(spec)
    for name, p in m.named_parameters():
        parts = name.split('.')
        if parts[0] == 'transformer' and parts[1] == 'h':
            assert p.requires_grad == (int(parts[2]) not in frozen_blocks), name
        else:
            assert p.requires_grad == ((parts[1] if parts[0] == 'transformer' else parts[0]) not in frozen_parts), name


def test_freeze_0_5_means_the_same_everywhere_it_is_written():
    """One meaning, the paper's partial bridge (the first author froze wte, wpe and blocks 0-4)."""
    assert freeze_spec('0-5', 24) == ({0, 1, 2, 3, 4}, {'wpe'})
    texts = {name: open(name).read() for name in ('bridge.py', 'README.md', 'slurm.sh', 'lab.sh')}
    assert "freeze = '0-5'" in open('config/bridge_p5.py').read()
    for name, text in texts.items():
        assert '0-5,wpe' not in text and '--freeze 0-5' in text, name   # one spelling, everywhere
    assert '0-5 = wpe + blocks 0-4' in bridge_help()


@pytest.mark.parametrize('spec', ['0-9', '5-5', '6-2', '8', 'wte', 'blocks', '', 'none,1', '0-', '-1'])
def test_bad_freeze_specs_say_what_is_valid(spec):
    with pytest.raises(UserError, match=r"bad --freeze item .*0 <= A < B <= 8.*wpe, ln_f, patch, head, all"):
        tiny().freeze(spec)


def test_frozen_parameters_do_not_move_trainable_ones_do(capsys):
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=4, n_head=2, n_embd=32, vocab_size=0, n_classes=3, img_size=16, patch_size=8,
                      dropout=0.1))
    m.freeze('0-2')
    assert 'freeze: blocks [0, 1] (2 of 4), wpe;' in capsys.readouterr().out
    opt = m.configure_optimizers(0.05, 1e-2, (0.9, 0.95))
    in_optimizer = sum(p.numel() for g in opt.param_groups for p in g['params'])
    assert in_optimizer == sum(p.numel() for p in m.parameters() if p.requires_grad)  # no state for frozen ones
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(m(torch.randn(8, 3, 16, 16)), torch.randint(0, 3, (8,)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for k, v in m.state_dict().items():
        frozen = k.startswith(('transformer.h.0.', 'transformer.h.1.', 'transformer.wpe'))
        assert torch.equal(v, before[k]) == frozen, k


def test_pretrained_partial_bridge_keeps_frozen_blocks_bit_identical(folder, tmp_path):
    hf = hf_gpt2(n_layer=3, n_head=2, n_embd=32, n_positions=32, vocab_size=50)
    hf.save_pretrained(tmp_path / 'hf')
    bridge.main(['--init_from', str(tmp_path / 'hf'), '--freeze', '0-2', '--dataset', 'folder',
                 '--data_dir', folder, '--out_dir', str(tmp_path / 'o'), '--img_size', '16', '--patch_size', '4',
                 '--max_iters', '4', '--batch_size', '16', '--device', 'cpu', '--compile', 'False',
                 '--num_workers', '0', '--lr', '1e-2'])
    sd = torch.load(tmp_path / 'o' / 'ckpt.pt', weights_only=True)['model']
    ref = hf.state_dict()
    assert 'transformer.wte.weight' not in sd                            # an image model keeps no wte
    for k, v in sd.items():
        w = ref.get(k, None)
        w = w.t() if w is not None and k.endswith(CONV1D) else w
        if k.startswith(('transformer.h.0.', 'transformer.h.1.', 'transformer.wpe')):
            assert torch.equal(v, w), k                                  # language weights, bit for bit
        elif k.startswith('transformer.h.2.') and k.endswith('weight') and 'ln' not in k:
            assert not torch.equal(v, w), k


# ---------------------------------------------------------------- the two stages
def test_learns_real_labels_but_only_memorizes_random_ones(folder, tmp_path):
    real = run(folder, tmp_path / 'real', '--stage', 'finetune', '--max_iters', '40', '--batch_size', '32',
               '--lr', '2e-3', '--aug', 'crop')
    assert real['test_acc'] >= 0.95 and real['train_acc'] > 0.8
    rand = run(folder, tmp_path / 'rand', '--max_iters', '160', '--batch_size', '32', '--lr', '3e-3', '--aug',
               'none', '--dropout', '0', '--label_smoothing', '0', '--eval_interval', '40')
    m = metrics(tmp_path / 'rand')
    assert m[0]['train_acc'] < 0.45 and rand['train_acc'] > 0.7      # memorizes the random labels ...
    assert all(r['test_acc'] <= 0.45 for r in m)                      # ... learning nothing about the true ones
    ckpt = torch.load(tmp_path / 'rand' / 'ckpt.pt', weights_only=True)
    true = torch.tensor([0] * 32 + [1] * 32 + [2] * 32 + [3] * 32)
    assert torch.equal(ckpt['train_labels'], data.random_labels(true, 4, 1.0, 0))  # kept, as drawn


def test_bridge_then_finetune_hand_off_and_eval_on_the_runs_own_data(folder, tmp_path, capsys):
    run(folder, tmp_path / 'b', '--max_iters', '4', '--batch_size', '16', '--patch_size', '8')
    b = torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=True)['model']
    three = make_folder(tmp_path / 'three', n_classes=3, n_train=8, n_val=4)
    capsys.readouterr()
    # stage 2 on another dataset: patch size and image size come from the checkpoint, the head is new
    bridge.main(['--stage', 'finetune', '--init_from', str(tmp_path / 'b' / 'ckpt.pt'), '--dataset', 'folder',
                 '--data_dir', three, '--out_dir', str(tmp_path / 'f'), '--freeze', '0-1', '--max_iters', '2',
                 '--batch_size', '8', '--device', 'cpu', '--compile', 'False', '--num_workers', '0'])
    assert 'a new head for 3 classes' in capsys.readouterr().out
    f = torch.load(tmp_path / 'f' / 'ckpt.pt', weights_only=True)
    assert f['model_config']['patch_size'] == 8 and f['config']['img_size'] == 16
    assert f['model']['head.weight'].shape == (3, 64)
    for k, v in f['model'].items():
        if k.startswith(('transformer.h.0.', 'transformer.wpe')):
            assert torch.equal(v, b[k]), k                                 # frozen: still the bridge weights
        elif k.startswith('transformer.h.1.mlp.c_fc'):
            assert not torch.equal(v, b[k]), k                             # trained further
    assert f['train_labels'].tolist() == [0] * 8 + [1] * 8 + [2] * 8      # finetune: the true labels
    e = bridge.main(['--stage', 'eval', '--init_from', str(tmp_path / 'f' / 'ckpt.pt'), '--device', 'cpu'])
    assert e['data_dir'] == three and e['test_acc'] == pytest.approx(f['history'][-1]['test_acc'], abs=1e-6)
    assert e['test_images'] == 12


def test_the_hand_off_keeps_the_bridges_data_and_says_what_it_froze(folder, tmp_path, capsys):
    """Stage 2 from a bridge on a folder, without --dataset: the folder, not a CIFAR download."""
    run(folder, tmp_path / 'b', '--max_iters', '4', '--batch_size', '16', '--freeze', '0')
    capsys.readouterr()
    args = ['--stage', 'finetune', '--init_from', str(tmp_path / 'b' / 'ckpt.pt'), '--max_iters', '2',
            '--batch_size', '16', '--device', 'cpu', '--compile', 'False', '--num_workers', '0']
    bridge.main([*args, '--out_dir', str(tmp_path / 'f')])
    out = capsys.readouterr().out
    assert f"its run's --dataset folder and --data_dir {folder} (give the flag for other data)" in out
    assert 'its bridge stage froze 0; --freeze none now' in out
    f = torch.load(tmp_path / 'f' / 'ckpt.pt', weights_only=True)
    assert (f['config']['dataset'], f['config']['data_dir']) == ('folder', folder)
    assert f['data'] == torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=True)['data']
    bridge.main([*args, '--out_dir', str(tmp_path / 'g'), '--freeze', '0', '--data_dir', folder])
    out = capsys.readouterr().out
    assert "its run's --dataset folder (give the flag" in out and 'froze 0; kept frozen' in out


def test_short_runs_warm_up_for_a_tenth_and_reach_the_peak(folder, tmp_path, capsys):
    c = parse(['--max_iters', '20', '--lr', '1e-3'], vars(bridge))[0]
    total, warmup = bridge.schedule(c, per_epoch=45.0)           # 5 warmup epochs = 225 steps of a 20-step run
    assert (total, warmup) == (20, 2) and 'more than a tenth' in capsys.readouterr().out
    c = parse(['--max_iters', '20', '--warmup_epochs', '1e308'], vars(bridge))[0]
    assert bridge.schedule(c, per_epoch=45.0) == (20, 2)         # finite, if absurd: capped like any other
    c = parse(['--epochs', '400'], vars(bridge))[0]
    assert bridge.schedule(c, per_epoch=781.0) == (312400, 3905)  # the paper's run keeps its 5 epochs
    run(folder, tmp_path / 'r', '--max_iters', '10', '--batch_size', '16', '--log_interval', '1', '--lr', '1e-3')
    printed = [float(x) for x in re.findall(r'\| lr ([0-9.e+-]+) \|', capsys.readouterr().out)]
    assert len(printed) == 10 and max(printed) == pytest.approx(1e-3, rel=1e-2)


def test_evaluation_counts_every_test_image_once_in_padded_batches(folder, tmp_path):
    """64 test images in batches of 24: the last batch is padded, and the padding counts nowhere."""
    result = run(folder, tmp_path / 'r', '--max_iters', '4', '--batch_size', '24')
    d = data.load_dataset('folder', folder, 16, 'cpu')
    ckpt = torch.load(tmp_path / 'r' / 'ckpt.pt', weights_only=True)
    net = GPT(GPTConfig(**ckpt['model_config']))
    net.load_state_dict(ckpt['model'])
    with torch.no_grad():
        logits = net.eval()(data.augment(d['test'][0], 'eval', 16, d['mean'], d['std']))
    assert result['test_images'] == 64
    assert result['test_acc'] == (logits.argmax(1) == d['test'][1]).float().mean().item()
    assert result['test_loss'] == pytest.approx(torch.nn.functional.cross_entropy(logits, d['test'][1]).item(),
                                                rel=1e-5)


# ---------------------------------------------------------------- exact resume
RESUME_ARGS = ['--max_iters', '24', '--batch_size', '16', '--eval_interval', '10', '--aug', 'rrc', '--lr', '3e-3',
               '--seed', '3']


def interrupt_at(step, monkeypatch, sig=signal.SIGINT):
    """A signal during the given step (through the schedule, which every step calls)."""
    real = bridge.lr_at

    def lr_at(it, *a):
        if it == step:
            signal.raise_signal(sig)
        return real(it, *a)
    monkeypatch.setattr(bridge, 'lr_at', lr_at)
    return real


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_resume_after_a_signal_is_bit_identical_labels_seeds_order_optimizer(folder, tmp_path, monkeypatch, dtype):
    full = run(folder, tmp_path / 'full', *RESUME_ARGS, '--dtype', dtype)
    real = interrupt_at(12, monkeypatch)
    with pytest.raises(Stopped) as stopped:
        run(folder, tmp_path / 'cut', *RESUME_ARGS, '--dtype', dtype)
    assert stopped.value.signum == signal.SIGINT and stopped.value.result['iter'] == 13  # after its step
    monkeypatch.setattr(bridge, 'lr_at', real)
    resumed = run(folder, tmp_path / 'cut', *RESUME_ARGS, '--dtype', dtype, '--init_from', 'resume')
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('full', 'cut'))
    assert a['iter'] == b['iter'] == 24 and torch.equal(a['train_labels'], b['train_labels'])
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    assert torch.equal(a['optimizer']['state'][0]['exp_avg_sq'], b['optimizer']['state'][0]['exp_avg_sq'])
    assert resumed['test_loss'] == full['test_loss']
    assert resumed['train_loss'] == pytest.approx(full['train_loss'], rel=1e-6)
    assert [m['iter'] for m in metrics(tmp_path / 'cut')] == [10, 13, 20, 24]


def test_float16_with_a_grad_scaler_trains_and_its_scale_resumes_bit_for_bit(folder, tmp_path, monkeypatch):
    args = [*RESUME_ARGS, '--dtype', 'float16', '--stage', 'finetune', '--aug', 'crop']
    full = run(folder, tmp_path / 'full', *args)
    real = interrupt_at(12, monkeypatch, signal.SIGTERM)
    with pytest.raises(Stopped):
        run(folder, tmp_path / 'cut', *args)
    monkeypatch.setattr(bridge, 'lr_at', real)
    run(folder, tmp_path / 'cut', *args, '--init_from', 'resume')
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('full', 'cut'))
    assert a['scaler'] == b['scaler'] and a['scaler']['_growth_tracker'] > 0  # the scaler's steps since a skip
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert full['test_acc'] > 0.5  # it learns the true labels


def test_bf16_autocast_training_learns_and_saves_float32_weights(folder, tmp_path, capsys):
    result = run(folder, tmp_path / 'r', '--stage', 'finetune', '--max_iters', '40', '--batch_size', '32',
                 '--lr', '2e-3', '--aug', 'crop', '--dtype', 'bfloat16')
    assert 'device cpu, bfloat16' in capsys.readouterr().out and result['test_acc'] >= 0.95
    ckpt = torch.load(tmp_path / 'r' / 'ckpt.pt', weights_only=True)
    assert {v.dtype for v in ckpt['model'].values()} == {torch.float32} and ckpt['scaler'] == {}
