"""
GPT-2's weights as files: where they are (OpenAI's four checkpoints, a Hugging Face folder, one
.safetensors or .bin file, an export of export.py), how they are read, and what is checked before
any tensor is loaded into model.py's GPT (`GPT.from_pretrained` and checkpoint.py use these).

  locate(source)              -> (the weights file, its HF config.json as a dict or {})
  read_weights(path)          -> the file's tensors on the CPU; a bad file is one line
  shape_of(sd, hf, path)      -> GPT-2's architecture from the tensors' shapes
  exported_image(source)      -> an export's image fields and its patch embedding and head
"""
import json
import os
import re

import torch

from configurator import UserError

# GPTConfig's fields of the image path: part of a network, which a hand-off and an export keep;
# SIZES are flags of bridge.py too, which a hand-off may only repeat (n_classes follows the data)
IMAGE_FIELDS = ('n_classes', 'img_size', 'patch_size')
SIZES = ('img_size', 'patch_size')

# the four checkpoints OpenAI released; a single weights file is recognised by its width
OFFICIAL = {
    'gpt2':        dict(n_layer=12, n_head=12, n_embd=768),   # 124M
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),  # 350M, the paper's backbone
    'gpt2-large':  dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    'gpt2-xl':     dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
HEADS_BY_WIDTH = {c['n_embd']: c['n_head'] for c in OFFICIAL.values()}
# keys in GPT-2 checkpoints that are not parameters: causal-mask buffers and the tied output layer
IGNORED = re.compile(r'(^|\.)(attn\.bias|attn\.masked_bias)$|^lm_head\.weight$')
# config.json settings of transformers' GPT2Config and the value this GPT-2 computes with
COMPUTES = dict(layer_norm_epsilon=1e-5, scale_attn_weights=True,
                scale_attn_by_inverse_layer_idx=False, add_cross_attention=False)


def check_keys(where, missing, unexpected):
    """A UserError that names (the first few) missing and unexpected keys of a checkpoint."""
    found = [f"{what} keys {', '.join(sorted(keys)[:3])}{'...' * (len(keys) > 3)}"
             for what, keys in (('missing', missing), ('unexpected', unexpected)) if keys]
    if found:
        raise UserError(f"{where}: {'; '.join(found)}")


def locate(source):
    """A source of OpenAI weights -> (the weights file, the HF config.json as a dict or {})."""
    if source in OFFICIAL:
        from downloads import gpt2_weights  # the network: read only when weights come from it
        return gpt2_weights(source), {}
    if os.path.isfile(source):
        return source, {}
    files = [os.path.join(source, f) for f in ('model.safetensors', 'pytorch_model.bin')]
    files = [f for f in files if os.path.isfile(f)]
    config = os.path.join(source, 'config.json')
    if not os.path.isdir(source):
        raise UserError(f"no weights '{source}': no such file or directory; use one of "
                        f"{', '.join(OFFICIAL)}, a checkpoint directory or .safetensors/.bin file")
    if not files or not os.path.isfile(config):
        raise UserError(f"{source} is not a GPT-2 checkpoint directory: expected config.json and "
                        f"model.safetensors or pytorch_model.bin in it")
    return files[0], read_hf_config(config)


def read_hf_config(path):
    """A Hugging Face config.json -> dict, if it describes what this GPT-2 computes: sizes that are
    positive whole numbers, tanh GELU, LayerNorm eps 1e-5, attention scaled by 1/sqrt(head size)."""
    try:
        with open(path, encoding='utf-8') as f:
            hf = json.load(f)
    except ValueError as e:  # also a file that is not UTF-8
        raise UserError(f"{path} is not JSON ({str(e)[:80]})") from None
    if not isinstance(hf, dict):
        raise UserError(f"{path}: expected a JSON object of GPT-2's settings, not a "
                        f"{type(hf).__name__}")
    for k in ('n_layer', 'n_head', 'n_embd', 'n_positions', 'vocab_size'):
        if k in hf and not (type(hf[k]) is int and hf[k] > 0):
            raise UserError(f"{path}: {k} {hf[k]!r} is not a positive whole number")
    if hf.get('activation_function', 'gelu_new') not in ('gelu_new', 'gelu_pytorch_tanh'):
        raise UserError(f"{path}: activation {hf['activation_function']} is not tanh GELU")
    for k, ours in COMPUTES.items():  # a setting another model needs would change the logits
        if hf.get(k, ours) != ours:
            raise UserError(f"{path}: {k} {hf[k]!r} is not what this GPT-2 computes ({ours!r}, "
                            f"OpenAI's); it would change every logit")
    if hf.get('n_inner') not in (None, 4 * hf.get('n_embd', 0)):
        raise UserError(f"{path}: n_inner {hf['n_inner']}: GPT-2's MLP is 4 x n_embd wide")
    return hf


def shape_of(sd, hf, path):
    """GPT-2's architecture from the tensors' shapes; a config.json must agree with them (so that
    nothing is allocated that the weights do not hold). n_head: the config's, else the official
    width's."""
    for key in ('wte.weight', 'wpe.weight'):
        if key not in sd or sd[key].dim() != 2:
            raise UserError(f"{path} is not a GPT-2 checkpoint: no 2-D tensor {key}")
    blocks = {re.match(r'h\.(\d+)\.', k) for k in sd if k.startswith('h.')}
    if None in blocks:
        odd = sorted(k for k in sd if k.startswith('h.') and not re.match(r'h\.\d+\.', k))
        raise UserError(f"{path}: unexpected key {odd[0]} (block keys are h.<index>.<name>)")
    (positions, n_embd), vocab = sd['wpe.weight'].shape, sd['wte.weight'].shape[0]
    shape = dict(block_size=positions, n_embd=n_embd, vocab_size=vocab,
                 n_layer=1 + max((int(m[1]) for m in blocks), default=-1))
    for k, name in (('block_size', 'n_positions'), ('n_embd', 'n_embd'),
                    ('vocab_size', 'vocab_size'), ('n_layer', 'n_layer')):
        if hf.get(name, shape[k]) != shape[k]:
            raise UserError(f"{path}: its config.json says {name} {hf[name]}, its weights hold "
                            f"{shape[k]}")
    if 'n_head' not in hf and n_embd not in HEADS_BY_WIDTH:
        raise UserError(f"{path}: width {n_embd} is not an official GPT-2 size "
                        f"({sorted(HEADS_BY_WIDTH)}); pass a directory with config.json for others")
    return dict(shape, n_head=hf.get('n_head', HEADS_BY_WIDTH.get(n_embd)))


def export_config(source):
    """The image_config.json of an export of export.py -> dict (its sizes as whole numbers, its
    class names...); None for any other source."""
    config = os.path.join(source, 'image_config.json') if os.path.isdir(source) else ''
    if not os.path.isfile(config):
        return None
    try:
        with open(config) as f:
            image = json.load(f)
        sizes = {k: int(image[k]) for k in IMAGE_FIELDS}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{config} is not an image_config.json of export.py ({e})") from None
    for k, v in sizes.items():
        if v <= 0 or v != image[k]:
            raise UserError(f"{config}: {k} {image[k]!r} is not a positive whole number")
    return dict(image, **sizes)


def exported_image(source):
    """The image parts of an export of export.py (image_config.json, image.safetensors) ->
    (GPTConfig fields, tensors); ({}, {}) for any other source."""
    config = export_config(source)
    if config is None:
        return {}, {}
    fields = {k: config[k] for k in IMAGE_FIELDS}
    parts = os.path.join(source, 'image.safetensors')
    image = read_weights(parts)
    from safetensors import safe_open
    with safe_open(parts, 'pt') as f:  # export.py writes the sizes into both files
        written = f.metadata() or {}  # an export made before it did: nothing to compare
    for k in IMAGE_FIELDS:
        if k in written and written[k] != str(fields[k]):
            raise UserError(f"{source}: image_config.json says {k} {fields[k]}, but its "
                            f"image.safetensors was exported with {written[k]}: one was edited")
    return dict(fields, vocab_size=0), image


def check_parts(source, image, fields, n_embd):
    """The tensors of an export's image.safetensors fit its image_config.json (patch size, class
    count) and its model.safetensors (width), before any is loaded."""
    if not image:
        return
    p, n = fields['patch_size'], fields['n_classes']
    need = {'patch.weight': (n_embd, 3, p, p), 'patch.bias': (n_embd,),
            'head.weight': (n, n_embd), 'head.bias': (n,)}
    extra = sorted(image.keys() - need.keys())
    if extra:
        raise UserError(f"{source}: image.safetensors holds {extra[0]}, which no export has")
    for k, shape in need.items():
        found = tuple(image[k].shape) if k in image else 'missing'
        if found != shape:
            raise UserError(f"{source}: image.safetensors' {k} is {found}, where image_config.json "
                            f"and model.safetensors need {shape}")


def read_weights(path, mmap=False):
    """A .safetensors or torch.save file -> its content, on the CPU; a bad file is a UserError."""
    try:
        if path.endswith('.safetensors'):
            import safetensors.torch
            return safetensors.torch.load_file(path)
        with open(path, 'rb') as f:
            head = f.read(4)
        if head != b'PK\x03\x04' and head[:1] != b'\x80':  # a zip (torch.save) or a pickle
            raise UserError(f"cannot read {path}: it is not a file of torch.save or safetensors "
                            f"(it begins with {head!r}{', a text file' * head.isascii()})")
        return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, corrupt, not weights at all: name the file, not a traceback
        lines = [line for line in str(e).splitlines() if line.strip()] or ['']
        if lines[0].startswith('Weights only load failed'):  # torch's reason is further down
            why = next((x for x in lines if 'GLOBAL' in x or 'Unpickler' in x), lines[-1])
            raise UserError(f"cannot read {path}: it holds Python objects that are not weights, "
                            f"which torch.load(weights_only=True) refuses to run "
                            f"({why.strip()[:160]})") from None
        raise UserError(f"cannot read {path}: {type(e).__name__}: {lines[0][:200]}") from None
