"""model.py is GPT-2: logits and the image path against transformers, loading OpenAI's layouts, the
optimizer; sample.py's text shows the weights are OpenAI's."""
import json
import os
import re
import shutil

import pytest
import torch

import model
import sample
from configurator import UserError
from conftest import hf_gpt2, tokens
from model import GPT, GPTConfig


def relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_logits_match_transformers_safetensors_dir(hf_dir):
    hf, path = hf_dir
    ours = GPT.from_pretrained(path).eval()
    idx = tokens()
    with torch.no_grad():
        ref, got = hf(idx).logits, ours.lm_logits(idx)
    assert got.shape == ref.shape == (2, 20, 300)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_logits_match_transformers_bin_dir_with_mask_buffers(tmp_path, hf_dir):
    """The .bin layout of older HF checkpoints: `transformer.` prefix, lm_head.weight, mask buffers."""
    hf, src = hf_dir
    sd = hf.state_dict()
    for i in range(hf.config.n_layer):  # what OpenAI's original files carry besides the parameters
        sd[f'transformer.h.{i}.attn.bias'] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        sd[f'transformer.h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
    assert 'lm_head.weight' in sd
    torch.save(sd, tmp_path / 'pytorch_model.bin')
    shutil.copy(os.path.join(src, 'config.json'), tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = tokens(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours.lm_logits(idx), hf(idx).logits, atol=1e-5, rtol=0)


def test_a_single_file_of_an_official_width_loads_and_another_width_is_refused(tmp_path, hf_dir, capsys):
    """A bare weights file (no config.json) of GPT-2 small's width: 12 heads follow from n_embd 768."""
    hf = hf_gpt2(n_layer=1, n_head=12, n_embd=768, n_positions=16)
    from safetensors.torch import save_file
    save_file({k.removeprefix('transformer.'): v.contiguous() for k, v in hf.state_dict().items()
               if k != 'lm_head.weight'}, tmp_path / 'weights.safetensors')
    ours = GPT.from_pretrained(str(tmp_path / 'weights.safetensors')).eval()
    assert (ours.config.n_layer, ours.config.n_head, ours.config.n_embd, ours.config.block_size) == (1, 12, 768, 16)
    assert 'loaded GPT-2 1 layers x 768 wide, 12 heads from' in capsys.readouterr().out
    idx = tokens(T=16, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours.lm_logits(idx), hf(idx).logits, atol=1e-5, rtol=0)
    torch.save(hf_dir[0].state_dict(), tmp_path / 'w.bin')
    with pytest.raises(UserError, match=r'width 64 is not an official GPT-2 size: give a directory'):
        GPT.from_pretrained(str(tmp_path / 'w.bin'))


def test_image_path_equals_transformers_inputs_embeds(hf_dir):
    """Our patch tokens through our blocks == HF GPT2Model(inputs_embeds=the same): causal, wpe added."""
    hf, path = hf_dir
    ours = GPT.from_pretrained(path, vocab_size=0, n_classes=5, img_size=32, patch_size=8).eval()
    assert not hasattr(ours.transformer, 'wte')  # image models carry no token embedding
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        x = ours.patch_tokens(images)
        # the row-major patch order, by hand: patch (row 1, col 2) of a 4x4 grid is token 6
        manual = (ours.patch.weight * images[:, :, 8:16, 16:24].unsqueeze(1)).sum((2, 3, 4)) + ours.patch.bias
        torch.testing.assert_close(x[:, 6], manual, atol=1e-5, rtol=0)
        ref = hf.transformer(inputs_embeds=x).last_hidden_state
        torch.testing.assert_close(ours.body(x), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.features(images), ref[:, -1], atol=1e-5, rtol=0)
        assert ours(images).shape == (3, 5)


@pytest.mark.parametrize('damage, message', [
    ('drop h.1.ln_2.bias', r'does not fit GPT-2 2x64: Missing key.*"h\.1\.ln_2\.bias"'),
    ('add h.0.attn.extra', r'does not fit GPT-2 2x64: Unexpected key.*"h\.0\.attn\.extra"'),
    ('reshape h.0.mlp.c_fc.weight', r'size mismatch for h\.0\.mlp\.c_fc\.weight'),
    ('truncate', r'cannot read .*model\.safetensors: '),
    ('config {"layer_norm_epsilon": 1e-6}', r"layer_norm_epsilon 1e-06 is not what this GPT-2 computes"),
    ('config {"activation_function": "gelu"}', r"activation_function 'gelu' is not what this GPT-2 computes"),
    ('config [1, 2]', r'config.json is not a JSON object of GPT-2.s settings'),
])
def test_checkpoints_that_are_not_this_gpt2_are_one_line(tmp_path, hf_dir, damage, message):
    from safetensors.torch import load_file, save_file
    _, src = hf_dir
    cfg = json.load(open(os.path.join(src, 'config.json')))
    sd = load_file(os.path.join(src, 'model.safetensors'))
    what, _, key = damage.partition(' ')
    if what == 'drop':
        del sd['transformer.' + key]
    elif what == 'add':
        sd['transformer.' + key] = torch.zeros(3)
    elif what == 'reshape':
        sd['transformer.' + key] = torch.zeros(64, 64)
    (tmp_path / 'config.json').write_text(json.dumps({**cfg, **json.loads(key)}) if key.startswith('{') else
                                          key if what == 'config' else json.dumps(cfg))
    save_file(sd, tmp_path / 'model.safetensors')
    if what == 'truncate':
        blob = (tmp_path / 'model.safetensors').read_bytes()
        (tmp_path / 'model.safetensors').write_bytes(blob[:len(blob) // 2])
    with pytest.raises(UserError, match=message):
        GPT.from_pretrained(str(tmp_path))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('touch ' + str(tmp_path / 'pwned'),))
    torch.save({'model': Evil(), 'model_config': {}, 'config': {}}, tmp_path / 'evil.pt')
    with pytest.raises(UserError, match=r'cannot read .*evil.pt: UnpicklingError: Weights only load failed'):
        model.read_weights(str(tmp_path / 'evil.pt'))
    assert not os.path.exists(tmp_path / 'pwned')


def test_missing_sources_and_an_offline_download_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"no weights '.*nope': no such file or directory; use one of gpt2"):
        GPT.from_pretrained(str(tmp_path / 'nope'))
    with pytest.raises(UserError, match=r'not a GPT-2 checkpoint directory.*config.json'):
        GPT.from_pretrained(str(tmp_path))
    # no network: a refused connection stands for it, so the test never downloads 500 MB where there is one
    monkeypatch.setattr(model, 'WEIGHTS_URL', 'http://127.0.0.1:9/{name}.safetensors')
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(UserError, match=r"could not download gpt2 from .*offline\? download model.safetensors "
                                        r"elsewhere and give its path instead of 'gpt2'"):
        GPT.from_pretrained('gpt2')
    assert not os.path.exists(tmp_path / 'hub' / 'gpt2' / 'gpt2.safetensors')  # no half-written cache entry


def test_scratch_init_is_gpt2s_and_architectures_by_name():
    m = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=256, vocab_size=0, n_classes=10, img_size=32, patch_size=4))
    sd = m.state_dict()
    assert abs(sd['transformer.h.0.attn.c_attn.weight'].std().item() - 0.02) < 0.002
    assert abs(sd['transformer.h.0.mlp.c_proj.weight'].std().item() - 0.02 / (2 * 4) ** 0.5) < 0.001
    assert sd['transformer.h.0.ln_1.weight'].eq(1).all() and sd['transformer.h.0.attn.c_attn.bias'].eq(0).all()
    assert sd['head.bias'].eq(0).all()
    assert model.architecture('gpt2-medium') == dict(n_layer=24, n_head=16, n_embd=1024)
    assert model.architecture('4x128') == dict(n_layer=4, n_head=2, n_embd=128)   # heads of 64, as in GPT-2
    assert model.architecture('2x48') == dict(n_layer=2, n_head=1, n_embd=48)
    for bad in ('3x200', '4x100', 'big'):
        with pytest.raises(UserError, match=r"--model '.*': use gpt2, .*LAYERSxWIDTH"):
            model.architecture(bad)


def test_image_sizes_are_checked(capsys):
    with pytest.raises(UserError, match=r'img_size 18 is not a multiple of patch_size 4'):
        GPT(GPTConfig(n_classes=2, img_size=18, patch_size=4))
    with pytest.raises(UserError, match=r"4096 patches \(256/4\)\^2 exceed GPT-2's 1024 positions"):
        GPT(GPTConfig(n_classes=2, img_size=256, patch_size=4))


def test_optimizer_decays_matrices_only_and_fused_adamw_takes_the_unfused_step(capsys):
    steps = []
    for fused in (True, False):  # configure_optimizers' own (fused, on the CPU too), and torch's default
        torch.manual_seed(0)
        m = GPT(GPTConfig(n_layer=2, n_head=1, n_embd=64, vocab_size=0, n_classes=4, img_size=16, patch_size=8))
        start = m.head.weight.detach().clone()
        opt = m.configure_optimizers(0.05, 1e-2, (0.9, 0.999))
        decay, no_decay = opt.param_groups
        assert decay['weight_decay'] == 0.05 and no_decay['weight_decay'] == 0.0 and opt.defaults['fused']
        assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() == 1 for p in no_decay['params'])
        assert {id(m.transformer.wpe.weight), id(m.patch.weight), id(m.head.weight)} <= {id(p) for p in decay['params']}
        if not fused:
            opt = torch.optim.AdamW([dict(params=g['params'], weight_decay=g['weight_decay']) for g in opt.param_groups],
                                    lr=1e-2, betas=(0.9, 0.999))
        for _ in range(3):
            torch.nn.functional.cross_entropy(m(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))),
                                              torch.arange(8) % 4).backward()
            opt.step()
            opt.zero_grad()
        steps.append(m.head.weight.detach() - start)
    assert 'fused=True' in capsys.readouterr().out
    assert steps[0].abs().max() > 1e-3 and relative(steps[0], steps[1]) < 1e-3  # the kernels round differently


def test_generate_with_byte_level_encoding_is_transformers_greedy(hf_dir):
    hf, path = hf_dir
    ours = GPT.from_pretrained(path).eval()
    enc = sample.byte_encoding()
    idx = torch.tensor([enc.encode('Hello')])
    out = sample.generate(ours, idx, 12, temperature=1e-4, top_k=5)  # ~greedy
    ref = hf.generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)  # greedy, transformers
    assert out.shape == (1, 5 + 12) and out.tolist() == ref.tolist()


def test_sample_samples_from_a_local_dir_and_refuses_an_image_model(hf_dir, bridged, capsys):
    sample.main([hf_dir[1], 'Hello'])
    out = capsys.readouterr().out
    assert 'byte-level tokens' in out and out.count('---\nHello') == 2
    sample.main([hf_dir[1], '--start', 'Hi', '--num_samples', '3', '--max_new_tokens', '5', '--top_k', '0',
                 '--temperature', '1.5', '--seed', '7'])  # nanoGPT's flags
    assert capsys.readouterr().out.count('---\nHi') == 3
    with pytest.raises(UserError, match=r'ckpt.pt is an image model of bridge.py: it keeps no token embedding'):
        sample.main([str(bridged / 'bridge' / 'ckpt.pt')])
    with pytest.raises(UserError, match=r'the prompt is empty: a byte-level model needs at least one character'):
        sample.main([hf_dir[1], ''])


def test_the_offline_tokenizer_line_names_the_files_tiktoken_looks_for(tmp_path, monkeypatch):
    import hashlib
    import tiktoken.load
    import tiktoken.registry
    asked = []

    def offline(url):  # what tiktoken fetches, recorded; no network here
        asked.append(url)
        raise ConnectionError('no network')
    monkeypatch.setattr(tiktoken.load, 'read_file', offline)
    monkeypatch.setattr(tiktoken.registry, 'ENCODINGS', {})
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(tmp_path / 'cache'))
    with pytest.raises(UserError) as e:
        sample.gpt2_encoding()
    for url in asked:  # the names tiktoken gives its cached files: the sha1 of the URL it fetched
        assert f"{hashlib.sha1(url.encode()).hexdigest()} ({os.path.basename(url)})" in str(e.value)
    assert asked and re.search(r"tiktoken looks in .*cache for", str(e.value))
