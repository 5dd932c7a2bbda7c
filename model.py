"""
GPT-2, exactly as OpenAI trained it, with an image path bolted on in front.

Text:   token ids -> wte + wpe -> blocks -> ln_f -> logits (tied to wte)             (GPT-2 itself)
Images: image -> Conv2d patches -> + wpe -> the same blocks -> ln_f -> pool -> head   (the paper)

The image path is what the paper (Luo & Shen, TMLR 2026) trains: the author's code feeds patch
tokens to HF GPT2Model through `inputs_embeds`, so GPT-2's learned position table wpe is added,
attention stays causal, and the LAST token (the only one that sees every patch) feeds the head.
Parameter names follow OpenAI's checkpoint layout, so `from_pretrained` maps keys one to one;
`python sample.py gpt2 "Hello, I'm a language model,"` shows that the weights are GPT-2's.
"""
import json
import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import UserError


@dataclass
class GPTConfig:
    block_size: int = 1024   # positions in wpe: tokens (patches) per sequence at most
    vocab_size: int = 50257  # 0 = image-only model: no wte at all (no memory, no optimizer state)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0     # GPT-2 trained with 0.1 (embd, attn, resid); the paper's code keeps it
    n_classes: int = 0       # > 0 adds the image path: patch embedding + classification head
    img_size: int = 224      # images are img_size x img_size ...
    patch_size: int = 16     # ... cut into (img_size // patch_size)**2 patch tokens


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
# OpenAI's GPT-2 uses Conv1D layers that store weights as [in, out]; nn.Linear wants [out, in]
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# keys in GPT-2 checkpoints that are not parameters: causal-mask buffers and the tied output layer
IGNORED = re.compile(r'(^|\.)(attn\.bias|attn\.masked_bias)$|^lm_head\.weight$')
FREEZABLE = ('wpe', 'ln_f', 'patch', 'head')  # the parts outside the blocks that --freeze can name
# config.json settings of transformers' GPT2Config and the value this GPT-2 computes with
COMPUTES = dict(layer_norm_epsilon=1e-5, scale_attn_weights=True,
                scale_attn_by_inverse_layer_idx=False, add_cross_attention=False)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q | k | v, heads contiguous
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): one attention per head
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # flash attention on CUDA under bf16/fp16 (no explicit mask, head size 64): no T x T matrix;
        # causal as in GPT-2 and the paper's code (a fork trying bidirectional sets it False here)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 was trained with the tanh approximation of GELU ("gelu_new"); erf GELU shifts logits
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate='tanh')))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5),
        ))
        if config.vocab_size:  # text: the output layer is wte itself (weight tying), see lm_logits
            self.transformer.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.n_classes:  # images: Conv2d with kernel = stride = patch is a per-patch Linear
            check_image_config(config)
            self.patch = nn.Conv2d(3, config.n_embd, config.patch_size, stride=config.patch_size)
            self.head = nn.Linear(config.n_embd, config.n_classes)
        # GPT-2's initialization; from_pretrained overwrites all but the image parts
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):  # residual projections scaled by depth, as in GPT-2
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @property
    def n_patches(self):
        return (self.config.img_size // self.config.patch_size) ** 2

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Conv2d):  # the patch embedding, as MAE/timm (the paper's code)
            torch.nn.init.xavier_uniform_(module.weight.view(module.weight.size(0), -1))
        if getattr(module, 'bias', None) is not None and not isinstance(module, nn.LayerNorm):
            torch.nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------- forward passes
    def embed(self, x):
        """(B, T, C) token embeddings -> (B, T, C) the input of block 0: + wpe[0:T], dropout."""
        T = x.size(1)
        if T > self.config.block_size:
            raise UserError(f"{T} tokens exceed GPT-2's {self.config.block_size} positions")
        return self.transformer.drop(x + self.transformer.wpe.weight[:T])

    def body(self, x):
        """(B, T, C) token embeddings -> (B, T, C) hidden states: embed, the blocks, ln_f."""
        x = self.embed(x)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def patch_tokens(self, images):
        """(B, 3, H, W) normalized images -> (B, T, C) patch tokens, row-major (top-left first)."""
        x = self.patch(images)                # (B, C, H/p, W/p)
        return x.flatten(2).transpose(1, 2)   # (B, T=(H/p)*(W/p), C)

    def features(self, images):
        """(B, 3, H, W) -> (B, C) features: the last token's, the only one that sees every patch
        under the causal mask (the paper's code, FPT). What the head sees; for probes and t-SNE."""
        return self.body(self.patch_tokens(images))[:, -1]

    def forward(self, images):
        """(B, 3, H, W) -> (B, n_classes) logits."""
        return self.head(self.features(images))

    def hidden_states(self, images):
        """(B, 3, H, W) -> every layer's (B, T, C) tokens, for probes: the input of block 0
        (patches + wpe), the output of each block, and after ln_f (what features pools)."""
        states = [self.embed(self.patch_tokens(images))]
        for block in self.transformer.h:
            states.append(block(states[-1]))
        return states + [self.transformer.ln_f(states[-1])]

    def lm_logits(self, idx):
        """(B, T) token ids -> (B, T, vocab) next-token logits; GPT-2's output layer is wte."""
        return F.linear(self.body(self.transformer.wte(idx)), self.transformer.wte.weight)

    # ---------------------------------------------------------------- partial bridge training
    def freeze(self, spec):
        """Freeze exactly the parts that spec names (freeze_spec), unfreeze the rest, print it."""
        names = [m for m in FREEZABLE if hasattr(self, m) or m in self.transformer]
        blocks, parts = freeze_spec(spec, self.config.n_layer, names)
        for name, p in self.named_parameters():
            where = name.removeprefix('transformer.').split('.')  # ['h', '3', ...] or ['wpe', ...]
            p.requires_grad = not (where[0] in parts or where[0] == 'h' and int(where[1]) in blocks)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        what = [f"blocks {sorted(blocks)} ({len(blocks)} of {self.config.n_layer})"]
        print(f"freeze: {', '.join(what * bool(blocks) + sorted(parts)) or 'nothing'}; "
              f"{frozen / 1e6:.2f}M of {total / 1e6:.2f}M parameters frozen, "
              f"{(total - frozen) / 1e6:.2f}M trainable")

    # ---------------------------------------------------------------- loading OpenAI's weights
    @classmethod
    def from_pretrained(cls, source, keep_head=True, **overrides):
        """GPT-2 with OpenAI's weights. source: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'
        (downloaded once), a directory in HF layout (config.json + model.safetensors or
        pytorch_model.bin), or one .safetensors/.bin file of an official width (the shapes give
        the rest). An export of export.py also brings its patch embedding and head (kept if
        keep_head and the class count is the same). overrides: GPTConfig fields the checkpoint
        lacks (n_classes, vocab_size=0...)."""
        path, hf = locate(source)
        sd = {k.removeprefix('transformer.'): v for k, v in read_weights(path).items()
              if not IGNORED.search(k)}
        fields, image = exported_image(source)
        for k in SIZES:  # part of an exported network: never changed
            if fields and overrides.get(k, fields[k]) != fields[k]:
                raise UserError(f"{source} was trained with {k} {fields[k]}, part of its network, "
                                f"not {overrides[k]}")
        config = GPTConfig(**{**shape_of(sd, hf, path), **fields, **overrides})
        if config.n_embd % config.n_head:
            raise UserError(f"{source}: n_embd {config.n_embd} is not a multiple of n_head "
                            f"{config.n_head}")
        check_parts(source, image, fields, config.n_embd)
        model = cls(config)
        if not config.vocab_size:  # an image model keeps no token embedding
            del sd['wte.weight']
        sd = {k: v.t() if k.endswith(CONV1D) else v for k, v in sd.items()}  # Conv1D: [in, out]
        where = f"{path} does not fit GPT-2 {config.n_layer}x{config.n_embd}"
        try:
            missing, unexpected = model.transformer.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # 'size mismatch for KEY: ...', a line per tensor
            raise UserError(f"{where}: {str(e).splitlines()[1].strip()}") from None
        check_keys(where, missing, unexpected)
        parts = model.load_image_parts(image, keep_head)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"loaded GPT-2 {config.n_layer} layers x {config.n_embd} wide, {config.n_head} "
              f"head{'s' * (config.n_head > 1)} "
              f"from {path}: {len(sd)} tensors{' (no wte: image model)' * (not config.vocab_size)}"
              f"{parts}; {n_params / 1e6:.2f}M parameters")
        return model

    def load_image_parts(self, image, keep_head):
        """The patch embedding and head of an export, into this model -> what was loaded, said."""
        if not image:
            return ''
        self.patch.load_state_dict({k[6:]: v for k, v in image.items() if k.startswith('patch.')})
        if keep_head and image['head.weight'].shape == self.head.weight.shape:
            self.head.load_state_dict({k[5:]: v for k, v in image.items() if k.startswith('head.')})
            return '; its patch embedding and head from image.safetensors'
        return '; its patch embedding from image.safetensors, a new head'

    # ---------------------------------------------------------------- optimizer, speed accounting
    def configure_optimizers(self, weight_decay, learning_rate, betas):
        """AdamW over the trainable parameters only; decay on matrices and embeddings, not on
        biases and LayerNorms; torch's fused kernel wherever it has one for the device (CUDA and
        CPU: a GPT-2-small step takes 180 ms instead of 650 on one core)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{'params': decay, 'weight_decay': weight_decay},
                  {'params': no_decay, 'weight_decay': 0.0}]
        try:
            opt = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)
        except RuntimeError:  # no fused kernel for this device (torch says so at construction)
            opt = torch.optim.AdamW(groups, lr=learning_rate, betas=betas)
        n_decay, n_rest = (sum(p.numel() for p in group) for group in (decay, no_decay))
        print(f"AdamW: {len(decay)} decayed tensors ({n_decay:,} parameters), {len(no_decay)} "
              f"without decay ({n_rest:,}); fused={opt.defaults['fused']}")
        return opt

    def flops_per_image(self):
        """Training FLOPs an image (PaLM appendix B): 6N a token + attention 12*L*T*C a token."""
        N = sum(p.numel() for n, p in self.named_parameters() if 'wpe' not in n and 'wte' not in n)
        T, L, C = self.n_patches, self.config.n_layer, self.config.n_embd
        return (6 * N + 12 * L * T * C) * T


def check_image_config(config):
    """The image path's sizes: whole patches, and no more of them than GPT-2 has positions."""
    size, patch = config.img_size, config.patch_size
    if size % patch:
        raise UserError(f"img_size {size} is not a multiple of patch_size {patch}")
    if (size // patch) ** 2 > config.block_size:
        raise UserError(f"{(size // patch) ** 2} patches ({size}/{patch})^2 exceed GPT-2's "
                        f"{config.block_size} positions: use a larger patch_size or a smaller "
                        f"img_size")


def freeze_spec(spec, n, names=FREEZABLE):
    """Partial bridge training: the parts of an n-block model that spec keeps at their loaded values
    -> (block indices, part names). spec: comma-separated items. 'A-B' = blocks A..B-1 (half-open
    like range(A, B): '0-5' = the first five blocks, the paper's partial setting), 'N' = block N,
    'wpe', 'ln_f', 'patch', 'head', 'all' (every block + wpe + ln_f), or 'none' alone."""
    items = [s.strip() for s in str(spec).split(',')]
    blocks, parts = set(), set()
    for item in items:
        m = re.fullmatch(r'(\d+)(?:-(\d+))?', item)  # 'A-B': range(A, B); 'N': range(N, N + 1)
        span = range(int(m[1]), int(m[2] or int(m[1]) + 1)) if m else range(0)
        if item == 'all':
            blocks.update(range(n))
            parts.update(('wpe', 'ln_f'))
        elif item in names:
            parts.add(item)
        elif span and span.stop <= n:
            blocks.update(span)
        elif item != 'none' or len(items) > 1:
            raise UserError(f"bad --freeze item '{item}' in '{spec}': this model has {n} blocks; "
                            f"use block ranges A-B (blocks A..B-1, 0 <= A < B <= {n}) or single "
                            f"blocks N < {n}, and/or {', '.join(list(names) + ['all'])}; or 'none' "
                            f"alone")
    return blocks, parts


def architecture(name):
    """'gpt2-medium' (an OpenAI size) or 'LAYERSxWIDTH', e.g. '4x128' (heads of 64, as in every
    GPT-2; one head below 64 wide) -> dict(n_layer, n_head, n_embd)."""
    if name in OFFICIAL:
        return OFFICIAL[name]
    m = re.fullmatch(r'([1-9]\d*)x([1-9]\d*)', name)
    n_head = max(1, int(m[2]) // 64) if m else 0
    if not m or int(m[2]) % 64 and int(m[2]) > 64:  # 4x100 would be one head of 100
        raise UserError(f"--model {name!r}: use {', '.join(OFFICIAL)} or LAYERSxWIDTH "
                        f"(e.g. 4x128; a width below 64 or a multiple of 64)")
    return dict(n_layer=int(m[1]), n_head=n_head, n_embd=int(m[2]))


# ---------------------------------------------------------------- where weights come from
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
