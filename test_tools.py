"""The side commands, off a run's path: export.py (a transformers GPT-2 that deploys what was
evaluated), analysis.py (the paper's figures, the probe, the lab's verdict), bench.py, lab.sh."""
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import analysis
import bench
import bridge
import data
import export
import model
from configurator import UserError
from conftest import ENV, HERE, TINY, hf_gpt2, metrics, run, write_patterns
from model import GPT, GPTConfig


def assert_png_and_json(prefix):
    with Image.open(f'{prefix}.png') as im:
        assert im.format == 'PNG' and im.size[0] > 200 and im.size[1] > 200
    with open(f'{prefix}.json') as fh:
        return json.loads(fh.read(), parse_constant=lambda c: pytest.fail(c))


def card_code(folder):
    """The model card's own Python, run: -> its classify()."""
    code = {}
    exec(re.search(r'```python\n(.*?)```', (folder / 'README.md').read_text(), re.S)[1], code)
    return code['classify']


# ---------------------------------------------------------------- export.py
def test_an_export_loads_in_transformers_and_gives_our_features(bridged, tmp_path):
    from safetensors.torch import load_file
    from transformers import GPT2Model
    out = tmp_path / 'hf'
    export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(out)])
    assert sorted(os.listdir(out)) == sorted(export.FILES)
    hf, info = GPT2Model.from_pretrained(str(out), output_loading_info=True)
    assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys')), info
    ours = analysis.load_run(str(bridged / 'bridge' / 'ckpt.pt'), 'cpu')[0]
    parts, cfg = load_file(out / 'image.safetensors'), json.load(open(out / 'image_config.json'))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        tokens = torch.nn.functional.conv2d(x, parts['patch.weight'], parts['patch.bias'], stride=cfg['patch_size'])
        theirs = hf.eval()(inputs_embeds=tokens.flatten(2).transpose(1, 2)).last_hidden_state[:, -1]
        torch.testing.assert_close(theirs, ours.features(x), atol=1e-5, rtol=0)
    assert cfg['classes'] == ['class0', 'class1', 'class2', 'class3'] and cfg['stage'] == 'bridge (100% random labels)'
    card = (out / 'README.md').read_text()
    assert 'no token embedding' in card and "GPT2Model.from_pretrained('" + str(out) in card
    assert re.search(r'^\| test acc \| \d+\.\d\d% \|$', card, re.M), card  # a percentage, not 0.0666666...


def shapes(root, seed=0):
    """Non-square images, half of them grayscale: class k is a grey level in the central square,
    with noise beside it, which a squashing resize would mix in."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', 48), ('val', 24)):
        for k in range(3):
            os.makedirs(root / split / f'level{k}', exist_ok=True)
            for i in range(n):
                h, w = rng.integers(12, 20), rng.integers(24, 40)
                img = rng.integers(0, 256, (h, w)).astype(np.uint8)
                img[:, (w - h) // 2:(w - h) // 2 + h] = np.clip(60 + 70 * k + rng.normal(0, 20, (h, h)), 0, 255)
                pil = Image.fromarray(img.T if i % 3 == 0 else img)  # some tall, some wide
                (pil if i % 2 else pil.convert('RGB')).save(root / split / f'level{k}' / f'{i}.png')
    return str(root)


@pytest.mark.parametrize('which', ['digits', 'shapes'])
def test_the_exports_processor_deploys_what_was_evaluated(which, digits, tmp_path):
    """The card's code on the test image files, through the exported image processor, scores what
    --stage eval scored, within half a point: square, non-square and grayscale images."""
    root = digits if which == 'digits' else shapes(tmp_path / 'shapes')
    result = bridge.main(['--stage', 'finetune', '--dataset', 'folder', '--data_dir', root, *TINY, '--aug', 'none',
                          '--max_iters', '150', '--lr', '1e-3', '--eval_interval', '150', '--batch_size', '48',
                          '--out_dir', str(tmp_path / 'ft')])
    export.main([str(tmp_path / 'ft' / 'ckpt.pt'), str(tmp_path / 'hf')])
    classify = card_code(tmp_path / 'hf')
    files = sorted(glob.glob(os.path.join(root, 'val', '*', '*.png')))
    classes = json.load(open(tmp_path / 'hf' / 'image_config.json'))['classes']
    truth = torch.tensor([classes.index(os.path.basename(os.path.dirname(f))) for f in files])
    with torch.no_grad():
        predicted = classify([Image.open(f) for f in files]).argmax(1)  # as they are: 'L' and 'RGB', any size
    accuracy = (predicted == truth).float().mean().item()
    assert 0.3 < result['test_acc'] and abs(accuracy - result['test_acc']) <= 0.005, (accuracy, result['test_acc'])


def test_an_export_is_whole_or_absent_and_refuses_a_folder_that_holds_files(bridged, tmp_path, monkeypatch):
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'notes.txt').write_text('mine')
    with pytest.raises(UserError, match=r'busy exists and holds files: export.py writes only into a new or empty'):
        export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(tmp_path / 'busy')])
    assert os.listdir(tmp_path / 'busy') == ['notes.txt']
    with pytest.raises(UserError, match=r"usage: python export.py CKPT_OR_RUN_DIR OUT_DIR, not .*ckpt.pt --out"):
        export.main([str(bridged / 'bridge' / 'ckpt.pt'), '--out'])
    monkeypatch.setattr(export, 'model_card', lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # killed while writing: nothing that would load as a plain GPT-2
        export.main([str(bridged / 'bridge' / 'ckpt.pt'), str(tmp_path / 'hf')])
    assert sorted(os.listdir(tmp_path)) == ['busy']
    ckpt = torch.load(bridged / 'bridge' / 'ckpt.pt', weights_only=True)
    ckpt['model']['transformer.h.1.mlp.c_fc.weight'][0, 0] = float('nan')  # diverged
    torch.save(ckpt, tmp_path / 'nan.pt')
    monkeypatch.undo()
    with pytest.raises(UserError, match=r'nan.pt holds weights that are not finite \(transformer.h.1.mlp.c_fc.weight\)'):
        export.main([str(tmp_path / 'nan.pt'), str(tmp_path / 'hf')])


# ---------------------------------------------------------------- analysis.py: the paper's figures
def test_outlier_counts_on_a_hand_built_state_dict_and_on_runs(tmp_path, bridged, hf_dir):
    sd = {'h.0.attn.c_attn.weight': torch.tensor([[0.1, 1.5, -2.0, 0.3, 0.0], [1.0, -1.0, 0.9, 3.0, 0.2]]),  # 3
          'h.0.ln_1.weight': torch.tensor([1.0, 1.2, 0.8, 1.0]),                                        # 1, LayerNorm
          'h.1.mlp.c_proj.bias': torch.tensor([0.5, -1.5]),                                             # 1
          'h.1.mlp.c_fc.weight': torch.tensor([-1.0, 1.0] * 50 + [30.0]),                               # 1; 9.4 std out
          'wte.weight': torch.tensor([[2.0, 0.0], [0.0, 0.0]]),                                         # 1, embedding
          'h.0.attn.bias': torch.ones(1, 1, 4, 4),                                                      # a mask
          'step': torch.tensor(5)}                                                                      # not a weight
    torch.save(sd, tmp_path / 'hand.pt')
    hand = str(tmp_path / 'hand.pt')
    r = analysis.main(['outliers', hand, '--out', str(tmp_path / 'o')])['models'][hand]
    assert r['all'] == dict(params=121, outliers=7, ratio=7 / 121, relative_outliers=1, relative_ratio=1 / 121)
    core = r['without_layernorm_and_embeddings']
    assert (core['params'], core['outliers']) == (113, 5)
    blocks = [(b['block'], b['params'], b['outliers'], b['relative_outliers']) for b in r['per_block']]
    assert blocks == [(0, 14, 4, 0), (1, 103, 2, 1)]
    assert assert_png_and_json(tmp_path / 'o')['threshold'] == 1.0
    srcs = [hf_dir[1], str(bridged / 'bridge'), str(bridged / 'bridge' / 'ckpt.pt')]
    r = analysis.main(['outliers', *srcs, '--out', str(tmp_path / 'g')])['models']
    assert r[srcs[0]]['all']['params'] == sum(p.numel() for p in GPT.from_pretrained(hf_dir[1]).parameters())
    assert r[srcs[0]]['all']['outliers'] > 0 and r[srcs[1]]['all']['outliers'] == 0  # GPT-2's init: LN gains = 1
    assert len(r[srcs[2]]['per_block']) == 2


def test_a_run_directory_is_its_step_zero_rebuilt_and_refused_once_its_start_changed(folder, tmp_path):
    """Only the head trains: every other tensor of the checkpoint must equal the rebuilt step 0, bit for bit."""
    run(folder, tmp_path / 'r', '--max_iters', '3', '--batch_size', '16', '--freeze', '0-2,ln_f,patch', '--lr', '1e-2')
    start, end = (analysis.load_run(str(p), 'cpu')[0].state_dict() for p in (tmp_path / 'r', tmp_path / 'r' / 'ckpt.pt'))
    assert start.keys() == end.keys()
    for k in start:
        assert torch.equal(start[k], end[k]) == (not k.startswith('head.')), k
    bridge.main(['--stage', 'finetune', '--init_from', str(tmp_path / 'r' / 'ckpt.pt'), '--out_dir',
                 str(tmp_path / 'f'), '--max_iters', '2', '--batch_size', '16', '--device', 'cpu', '--num_workers', '0'])
    start = analysis.load_run(str(tmp_path / 'f'), 'cpu')[0].state_dict()  # stage 1's end: checked, rebuilt
    assert all(torch.equal(v, end[k]) for k, v in start.items())
    run(folder, tmp_path / 'r', '--max_iters', '5', '--batch_size', '16', '--init_from', 'resume')  # stage 1 moves on
    with pytest.raises(UserError, match=r'f started from .*r/ckpt.pt at step 3, which now holds step 5'):
        analysis.load_run(str(tmp_path / 'f'), 'cpu')


def test_curves_plot_every_run_and_say_what_it_was(bridged, tmp_path):
    real = str(bridged / 'real' / 'metrics.jsonl')
    r = analysis.main(['curves', str(bridged / 'bridge'), real, '--out', str(tmp_path / 'c')])
    assert_png_and_json(tmp_path / 'c')
    assert r[str(bridged / 'bridge')]['label'] == 'bridge: scratch, 100% random labels'
    assert r[real]['label'] == 'real: scratch, 0% random labels'
    assert r[real]['final_test_acc'] == metrics(bridged / 'real')[-1]['test_acc']
    ckpt = str(bridged / 'bridge' / 'ckpt.pt')
    assert analysis.main(['curves', ckpt, '--out', str(tmp_path / 'a')])[ckpt] == r[str(bridged / 'bridge')]


def test_landscape_ends_are_the_start_and_end_of_training(bridged, tmp_path, folder):
    run_dir = str(bridged / 'bridge')  # a run directory: its ckpt.pt is the end, its step 0 the start
    r = analysis.main(['landscape', run_dir, '--grid', '5', '--batches', '1', '--batch_size', '32',
                       '--out', str(tmp_path / 'l')])
    assert assert_png_and_json(tmp_path / 'l')['alphas'] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert r['loss'][2][2] == pytest.approx(r['loss_end']) and r['loss'][2][0] == pytest.approx(r['loss_start'])
    d = data.load_dataset('folder', folder, 16, 'cpu')
    for src, key in ((run_dir + '/ckpt.pt', 'loss_end'), (run_dir, 'loss_start')):  # evaluated directly
        net = analysis.load_run(src, 'cpu')[0]
        x, y, _ = analysis.images_for(net, d, 'test', 32, seed=0)
        with torch.no_grad():
            assert r[key] == pytest.approx(torch.nn.functional.cross_entropy(net(x), y).item(), rel=1e-4)
    assert r['loss_end'] != pytest.approx(r['loss_start'], rel=1e-3)


def test_tsne_separates_classes_after_real_training(bridged, tmp_path):
    r = analysis.main(['tsne', str(bridged / 'real'), str(bridged / 'real' / 'ckpt.pt'), '--images', '64',
                       '--out', str(tmp_path / 't')])
    assert_png_and_json(tmp_path / 't')
    before, after = r[str(bridged / 'real')], r[str(bridged / 'real' / 'ckpt.pt')]
    assert after['silhouette'] > before['silhouette'] and after['silhouette'] > 0.3   # trained features cluster


def test_alignment_rises_under_random_labels_on_anisotropic_images_only(tmp_path):
    """Theorem 4.1, measured: random-label training pulls the patch filters' covariance towards the covariance
    of the image patches (Maennel et al. 2020); with isotropic noise there is nothing to align to."""
    found = {}
    for kind in ('smooth', 'noise'):
        root = write_patterns(tmp_path / kind, kind)
        run(root, tmp_path / f'run_{kind}', '--max_iters', '400', '--batch_size', '32', '--lr', '1e-2',
            '--warmup_epochs', '1', '--aug', 'none', '--dropout', '0', '--label_smoothing', '0',
            '--eval_interval', '400')
        r = analysis.main(['alignment', str(tmp_path / f'run_{kind}'), str(tmp_path / f'run_{kind}' / 'ckpt.pt'),
                           '--images', '128', '--out', str(tmp_path / f'a_{kind}')])
        found[kind] = [r[str(tmp_path / f'run_{kind}')], r[str(tmp_path / f'run_{kind}' / 'ckpt.pt')]]
    (s0, s1), (n0, n1) = found['smooth'], found['noise']
    assert s1['alignment'] > 1.5 * s0['alignment'] and s1['top_k_overlap'] > s0['top_k_overlap']
    assert n1['alignment'] < n0['alignment']                   # isotropic inputs: no rise


def test_probe_fit_agrees_with_scikit_learn_and_reads_every_layer():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    x, y = (torch.tensor(v) for v in load_digits(return_X_y=True))
    x, train = x.float(), torch.arange(len(y)) % 5 != 0  # a real small dataset: 64 pixels, 10 classes
    w = analysis.logistic_regression(x[train], y[train], 10, 1e-3)
    z = [((v - w[2]) / w[3]).numpy() for v in (x[train], x[~train])]  # standardized as ours was
    ref = LogisticRegression(C=1 / (1e-3 * int(train.sum())), max_iter=20000, tol=1e-8).fit(z[0], y[train].numpy())
    assert abs(analysis.accuracy(w, x[~train], y[~train]) - ref.score(z[1], y[~train].numpy())) <= 0.01
    net = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=64, vocab_size=0, n_classes=4, img_size=16, patch_size=4)).eval()
    with torch.no_grad():
        states = analysis.hidden_states(net, torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
        assert len(states) == 3 + 2 and all(s.shape == (5, 16, 64) for s in states)
        assert torch.equal(states[-1][:, -1], net.features(torch.randn(5, 3, 16, 16,
                                                                       generator=torch.Generator().manual_seed(0))))


def test_probe_a_network_trained_on_true_labels_probes_far_above_a_random_one(digits, tmp_path):
    bridge.main(['--stage', 'finetune', '--dataset', 'folder', '--data_dir', digits, *TINY, '--aug', 'none',
                 '--max_iters', '150', '--lr', '3e-3', '--batch_size', '64', '--dropout', '0', '--warmup_epochs', '0',
                 '--out_dir', str(tmp_path / 'real'), '--eval_interval', '150'])
    r = analysis.main(['probe', str(tmp_path / 'real' / 'ckpt.pt'), str(tmp_path / 'real'), 'scratch', '--model',
                       '2x64', '--out', str(tmp_path / 'p'), '--device', 'cpu', '--images', '300'])
    assert_png_and_json(tmp_path / 'p')
    trained, start, scratch = (r['sources'][s]['layers'] for s in r['sources'])
    assert [row['layer'] for row in trained] == ['input', 'block 0', 'block 1', 'ln_f']
    assert trained[-1]['last']['test_acc'] > scratch[-1]['last']['test_acc'] + 0.2  # the head's own features
    assert start == scratch  # a run's step 0 is the scratch network of its seed, rebuilt exactly
    assert trained[0]['train'] == 300 and trained[0]['test'] == 360 and r['chance'] == 0.1


def arm_dir(root, name, acc, **config):
    """A run directory as bridge.py writes it, with a final test accuracy: an arm of the comparison."""
    os.makedirs(root / name, exist_ok=True)
    c = {**dict(stage='finetune', init_from='scratch', model='2x64', dataset='folder', test_subset=0, seed=0,
                data=dict(classes=['a', 'b', 'c', 'd'], files='f00d', test=400)), **config}
    (root / name / 'config.json').write_text(json.dumps(c))
    (root / name / 'metrics.jsonl').write_text(json.dumps(dict(iter=100, epoch=1, train_acc=0.5, test_acc=acc,
                                                               test_images=400)) + '\n')
    return str(root / name)


def test_compare_gives_each_arm_a_verdict_against_the_test_sets_noise(tmp_path, capsys):
    """On 400 test images two standard errors of a difference near 50% are 7.1 points."""
    arms = [arm_dir(tmp_path, 'scratch', 0.50), arm_dir(tmp_path, 'gpt2', 0.60, init_from='gpt2'),
            arm_dir(tmp_path, 'near', 0.53, init_from='gpt2'), arm_dir(tmp_path, 'worse', 0.40, init_from=None)]
    r = analysis.main(['compare', *arms, '--out', str(tmp_path / 'c')])
    assert [a['verdict'] for a in r['arms']] == ['the baseline', 'beats scratch (noise +-7.0)',
                                                 'within noise of scratch (+-7.1)', 'worse than scratch']
    assert r['chance'] == 0.25 and assert_png_and_json(tmp_path / 'c')['test_images'] == 400
    assert '| gpt2 | gpt2 -> finetune | 100 | 60.00% | +10.0 points | beats scratch (noise +-7.0) |' in \
        capsys.readouterr().out
    other = [arm_dir(tmp_path, 'three', 0.9, data=dict(classes=['a', 'b', 'c'], files='beef', test=400)),
             arm_dir(tmp_path, 'sub', 0.9, test_subset=100)]
    for arm in other:
        with pytest.raises(UserError, match=r'compare: .* did not evaluate on the .* of scratch: their accuracies are '
                                            r'not comparable'):
            analysis.main(['compare', arms[0], arm, '--out', str(tmp_path / 'x')])
    a, b = (tmp_path / 'loop_a' / 'ckpt.pt', tmp_path / 'loop_b' / 'ckpt.pt')  # each the other's start
    loop = [arm_dir(tmp_path, 'loop_a', 0.5, init_from=str(b)), arm_dir(tmp_path, 'loop_b', 0.5, init_from=str(a))]
    assert [r['label'] for r in analysis.main(['compare', *loop, '--out', str(tmp_path / 'l')])['arms']] == [
        'ckpt.pt -> finetune -> finetune -> finetune', 'ckpt.pt -> finetune -> finetune -> finetune']
    (tmp_path / 'pct').mkdir()
    (tmp_path / 'pct' / 'metrics.jsonl').write_text('{"iter": 1, "epoch": 1, "train_acc": 0.5, "test_acc": 57}\n')
    with pytest.raises(UserError, match=r'pct/metrics.jsonl, line 1: an accuracy outside \[0, 1\]'):
        analysis.main(['compare', arms[0], str(tmp_path / 'pct'), '--out', str(tmp_path / 'x')])


def test_analysis_errors_are_one_line(tmp_path, bridged, monkeypatch):
    for argv, message in ((['plots', 'x'], r"unknown subcommand 'plots'"),
                          (['tnse', 'x'], r"unknown subcommand 'tnse' \(did you mean tsne\?\)"),
                          (['tsne', str(bridged / 'bridge' / 'metrics.jsonl')], r"metrics.jsonl, not its weights"),
                          (['tsne', str(tmp_path)], r'is not a bridge.py run directory: it has no ckpt.pt'),
                          (['landscape', str(bridged / 'bridge'), '--grid', '1'], r'--grid 1: a surface needs'),
                          (['curves', str(tmp_path)], r'no metrics at .*metrics.jsonl')):
        with pytest.raises(UserError, match=message):
            analysis.main(argv)
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # as if it were not installed
    with pytest.raises(UserError, match='pip install matplotlib scikit-learn'):
        analysis.main(['curves', str(tmp_path)])


# ---------------------------------------------------------------- bench.py
def test_bench_runs_on_cpu_compares_the_same_network_and_ends_with_json(capsys, folder):
    out = bench.main(['--model', '2x64', '--img_size', '16', '--patch_size', '4', '--batch_size', '8', '--device',
                      'cpu', '--compile', 'False', '--steps', '2', '--rounds', '2', '--warmup', '1'])
    assert out['ours_img_s'] > 0 and out['hf_img_s'] > 0 and out['data_img_s'] > 0 and 0 < out['mfu'] < 1
    assert out['ratio'] == pytest.approx(out['ours_img_s'] / out['hf_img_s'], rel=1e-2)
    printed = capsys.readouterr().out
    assert 'ours / transformers:' in printed and json.loads(printed.strip().splitlines()[-1])['ratio'] == out['ratio']
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=0, n_classes=10, img_size=16, patch_size=4)
    ours, theirs = GPT(cfg).eval(), bench.HFImageGPT2(cfg).eval()  # fair: the same network on both sides
    hf_sd = {('gpt2.' + k.removeprefix('transformer.') if k.startswith('transformer.') else k):
             (v.t() if k.endswith(model.CONV1D) else v) for k, v in ours.state_dict().items()}
    missing, unexpected = theirs.load_state_dict(hf_sd, strict=False)
    assert not unexpected and all(k.startswith('gpt2.wte') for k in missing)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=0)
    out = bench.main(['--stream', os.path.join(folder, 'train'), '--img_size', '16', '--batch_size', '16',
                      '--steps', '3', '--num_workers', '1', '--device', 'cpu'])
    assert out['stream_img_s'] > 0 and out['workers'] == 1


# ---------------------------------------------------------------- lab.sh
def test_the_lab_runs_offline_on_a_local_gpt2_and_a_folder_and_ends_with_a_verdict(folder, tmp_path):
    """lab.sh's documented offline dry run, with a 4-block GPT-2 (the partial arm freezes 0-3, all but its
    last block) and a folder smaller than its subsets (they fit the data); then the paper's scale into the
    same folder is refused before it trains."""
    hf_gpt2(n_layer=4).save_pretrained(tmp_path / 'gpt2')
    env = {**ENV, 'GPT2': str(tmp_path / 'gpt2'), 'DATA': folder, 'OUT': str(tmp_path / 'lab')}
    flags = ['--device', 'cpu', '--num_workers', '0', '--img_size', '16', '--patch_size', '4', '--max_iters', '4',
             '--eval_interval', '4', '--batch_size', '8', '--dtype', 'float32']
    r = subprocess.run(['bash', 'lab.sh', 'lab', *flags], cwd=HERE, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'scratch 4x64, partial bridge --freeze 0-3' in r.stdout and r.stdout.count('step 4/4') == 8
    assert '--subset 2000: the train split holds 128 images, all of them used' in r.stdout
    assert re.search(r'the first run took \d+ s: the 8 take about [\d.]+ minutes here', r.stdout)
    summary = json.load(open(tmp_path / 'lab' / 'compare.json'))
    assert [a['arm'] for a in summary['arms']] == ['scratch', 'gpt2', 'gpt2_bridge', 'gpt2_bridge_p5', 'scratch_bridge']
    assert [a['label'] for a in summary['arms']] == [
        'scratch 4x64 -> finetune', 'gpt2 -> finetune', 'gpt2 -> bridge -> finetune',
        'gpt2 -> bridge (0-3 frozen) -> finetune', 'scratch 4x64 -> bridge -> finetune']
    assert all(re.fullmatch(r'the baseline|(beats|worse than) scratch.*|within noise of scratch.*', a['verdict'])
               for a in summary['arms'])
    assert '| gpt2_bridge_p5 | gpt2 -> bridge (0-3 frozen) -> finetune | 4 |' in r.stdout
    p5 = torch.load(tmp_path / 'lab' / 'bridge_p5' / 'ckpt.pt', weights_only=True)['model']
    start = GPT.from_pretrained(str(tmp_path / 'gpt2'), n_classes=4, vocab_size=0, img_size=16, patch_size=4)
    key = 'transformer.h.2.attn.c_attn.weight'  # block 2: frozen by 0-3, at its language weights
    assert torch.equal(p5[key], start.state_dict()[key])
    # the paper's scale into this folder would be another command's runs: refused before it trains
    with pytest.raises(UserError, match=r"--auto_resume: .*bridge holds another command's run: --aug 'rrc' is not"):
        bridge.main(['--stage', 'bridge', '--init_from', str(tmp_path / 'gpt2'), '--auto_resume', 'True',
                     '--out_dir', str(tmp_path / 'lab' / 'bridge'), '--dataset', 'folder', '--data_dir', folder,
                     *flags])
