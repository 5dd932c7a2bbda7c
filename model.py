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
import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import UserError
from weights import (IGNORED, OFFICIAL, SIZES, check_keys, check_parts, exported_image, locate,
                     read_weights, shape_of)


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


# OpenAI's GPT-2 uses Conv1D layers that store weights as [in, out]; nn.Linear wants [out, in]
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
FREEZABLE = ('wpe', 'ln_f', 'patch', 'head')  # the parts outside the blocks that --freeze can name


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
