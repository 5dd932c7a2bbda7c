"""
GPT-2, exactly as OpenAI trained it, with an image path in front (Luo & Shen, TMLR 2026).

Text:   token ids -> wte + wpe -> blocks -> ln_f -> logits (tied to wte)             (GPT-2 itself)
Images: image -> Conv2d patches -> + wpe -> the same blocks -> ln_f -> last token -> head

The image path is the paper's code's, HF GPT2Model(inputs_embeds=patch tokens): wpe is added,
attention stays causal, and the last token, the only one that sees every patch, feeds the head.
"""
import json
import math
import os
import re
from dataclasses import dataclass

import safetensors.torch
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


# the four checkpoints OpenAI released; a single weights file is recognised by its width
OFFICIAL = {
    'gpt2':        dict(n_layer=12, n_head=12, n_embd=768),   # 124M
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),  # 350M, the paper's backbone
    'gpt2-large':  dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    'gpt2-xl':     dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
WEIGHTS_URL = 'https://huggingface.co/openai-community/{name}/resolve/main/model.safetensors'
# OpenAI's GPT-2 uses Conv1D layers that store weights as [in, out]; nn.Linear wants [out, in]
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# keys in GPT-2 checkpoints that are not parameters: causal-mask buffers, the tied output layer
IGNORED = re.compile(r'(^|\.)attn\.(masked_)?bias$|^lm_head\.weight$')
# config.json settings that change what GPT-2 computes, and the values this GPT-2 computes with
COMPUTES = dict(activation_function=('gelu_new', 'gelu_pytorch_tanh'), layer_norm_epsilon=(1e-5,),
                scale_attn_weights=(True,), scale_attn_by_inverse_layer_idx=(False,))


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

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Conv2d):  # the patch embedding, as MAE/timm (the paper's code)
            torch.nn.init.xavier_uniform_(module.weight.view(module.weight.size(0), -1))
        if getattr(module, 'bias', None) is not None and not isinstance(module, nn.LayerNorm):
            torch.nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------- forward passes
    def body(self, x):
        """(B, T, C) token embeddings -> (B, T, C) hidden states: + wpe[0:T], the blocks, ln_f."""
        x = self.transformer.drop(x + self.transformer.wpe.weight[:x.size(1)])
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def patch_tokens(self, images):
        """(B, 3, H, W) normalized images -> (B, T, C) patch tokens, row-major (top-left first)."""
        x = self.patch(images)                # (B, C, H/p, W/p)
        return x.flatten(2).transpose(1, 2)   # (B, T=(H/p)*(W/p), C)

    def features(self, images):
        """(B, 3, H, W) -> (B, C): the last token's features, the only one that sees every patch
        under the causal mask (the paper's code, FPT). What the head sees; for probes and t-SNE."""
        return self.body(self.patch_tokens(images))[:, -1]

    def forward(self, images):
        """(B, 3, H, W) -> (B, n_classes) logits."""
        return self.head(self.features(images))

    def lm_logits(self, idx):
        """(B, T) token ids -> (B, T, vocab) next-token logits; GPT-2's output layer is wte."""
        return F.linear(self.body(self.transformer.wte(idx)), self.transformer.wte.weight)

    # ---------------------------------------------------------------- partial bridge training
    def freeze(self, spec):
        """Freeze exactly the parts that spec names (freeze_spec), unfreeze the rest, print it."""
        names = [m for m in ('wpe', 'ln_f', 'patch', 'head') if hasattr(self, m) or m in
                 self.transformer]
        blocks, parts = freeze_spec(spec, self.config.n_layer, names)
        for name, p in self.named_parameters():
            where = name.removeprefix('transformer.').split('.')  # ['h', '3', ...] or ['wpe', ...]
            p.requires_grad = not (where[0] in parts or where[0] == 'h' and int(where[1]) in blocks)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        what = [f"blocks {sorted(blocks)} ({len(blocks)} of {self.config.n_layer})"] * bool(blocks)
        print(f"freeze: {', '.join(what + sorted(parts)) or 'nothing'}; {frozen / 1e6:.2f}M of "
              f"{total / 1e6:.2f}M parameters frozen, {(total - frozen) / 1e6:.2f}M trainable")

    # ---------------------------------------------------------------- loading OpenAI's weights
    @classmethod
    def from_pretrained(cls, source, **overrides):
        """GPT-2 with OpenAI's weights, from 'gpt2'...'gpt2-xl' (downloaded once), an HF directory
        or one weights file (see locate). overrides: fields the checkpoint lacks (n_classes...)."""
        path, hf = locate(source)
        sd = {k.removeprefix('transformer.'): v for k, v in read_weights(path).items()
              if not IGNORED.search(k)}
        if not {'wte.weight', 'wpe.weight'} <= sd.keys():
            raise UserError(f"{path} is not a GPT-2 checkpoint: it has no wte and wpe weights")
        (positions, n_embd), vocab = sd['wpe.weight'].shape, len(sd['wte.weight'])
        n_head = hf.get('n_head') or {c['n_embd']: c['n_head'] for c in OFFICIAL.values()}.get(
            n_embd)  # a bare file: an official width says its heads
        if not n_head:
            raise UserError(f"{path}: width {n_embd} is not an official GPT-2 size: give a "
                            f"directory with its config.json")
        n_layer = len({k.split('.')[1] for k in sd if k.startswith('h.')})
        config = GPTConfig(**{**dict(block_size=positions, vocab_size=vocab, n_layer=n_layer,
                                     n_head=n_head, n_embd=n_embd), **overrides})
        model = cls(config)
        if not config.vocab_size:  # an image model keeps no token embedding
            del sd['wte.weight']
        sd = {k: v.t() if k.endswith(CONV1D) else v for k, v in sd.items()}  # Conv1D: [in, out]
        try:
            model.transformer.load_state_dict(sd)
        except RuntimeError as e:  # missing or unexpected keys, shapes: a line each after the first
            raise UserError(f"{path} does not fit GPT-2 {n_layer}x{n_embd}: "
                            f"{str(e).splitlines()[1].strip()}") from None
        n_params = sum(p.numel() for p in model.parameters())
        print(f"loaded GPT-2 {n_layer} layers x {n_embd} wide, {n_head} heads from {path}: "
              f"{len(sd)} tensors{' (no wte: an image model)' * (not config.vocab_size)}; "
              f"{n_params / 1e6:.2f}M parameters")
        return model

    # ---------------------------------------------------------------- optimizer, speed accounting
    def configure_optimizers(self, weight_decay, learning_rate, betas):
        """AdamW over the trainable parameters only, fused where torch has the kernel; decay on
        matrices and embeddings, not on biases and LayerNorms."""
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
        T = (self.config.img_size // self.config.patch_size) ** 2
        return (6 * N + 12 * self.config.n_layer * T * self.config.n_embd) * T


def check_image_config(config):
    """The image path's sizes: whole patches, and no more of them than GPT-2 has positions."""
    size, patch = config.img_size, config.patch_size
    if size % patch:
        raise UserError(f"img_size {size} is not a multiple of patch_size {patch}")
    if (size // patch) ** 2 > config.block_size:
        raise UserError(f"{(size // patch) ** 2} patches ({size}/{patch})^2 exceed GPT-2's "
                        f"{config.block_size} positions: use a larger patch_size or a smaller "
                        f"img_size")


def freeze_spec(spec, n, names=('wpe', 'ln_f', 'patch', 'head')):
    """--freeze in an n-block model -> (block indices, part names). Items: 'A-B' = blocks A..B-1,
    'N', 'all' (every block, ln_f), the names, or 'none'. Block 0 takes wpe, its input, with it:
    the author's code froze wte, wpe, blocks 0-4, and '0-5' is that (an image model has no wte)."""
    items = [s.strip() for s in str(spec).split(',')]
    blocks, parts = set(), set()
    for item in items:
        m = re.fullmatch(r'(\d+)(?:-(\d+))?', item)  # 'A-B': range(A, B); 'N': range(N, N + 1)
        span = range(int(m[1]), int(m[2] or int(m[1]) + 1)) if m else range(0)
        if item == 'all':
            blocks.update(range(n))
        elif item in names:
            parts.add(item)
        elif span and span.stop <= n:
            blocks.update(span)
        elif item != 'none' or len(items) > 1:
            raise UserError(f"bad --freeze item '{item}' in '{spec}': this model has {n} blocks; "
                            f"use block ranges A-B (blocks A..B-1, 0 <= A < B <= {n}) or single "
                            f"blocks N < {n}, and/or {', '.join(list(names) + ['all'])}; or 'none' "
                            f"alone")
    if 0 in blocks:  # block 0's input goes with it
        parts.add('wpe')
    if 'all' in items:
        parts.add('ln_f')
    return blocks, parts


def architecture(name):
    """'gpt2-medium' (an OpenAI size) or 'LAYERSxWIDTH', e.g. '4x128' (heads of 64, as in every
    GPT-2; one head below 64 wide) -> dict(n_layer, n_head, n_embd)."""
    if name in OFFICIAL:
        return OFFICIAL[name]
    m = re.fullmatch(r'([1-9]\d*)x([1-9]\d*)', name)
    if not m or int(m[2]) % 64 and int(m[2]) > 64:  # 4x100 would be one head of 100
        raise UserError(f"--model {name!r}: use {', '.join(OFFICIAL)} or LAYERSxWIDTH "
                        f"(e.g. 4x128; a width below 64 or a multiple of 64)")
    return dict(n_layer=int(m[1]), n_head=max(1, int(m[2]) // 64), n_embd=int(m[2]))


# ---------------------------------------------------------------- where the weights are
def locate(source):
    """A source of GPT-2 weights -> (the weights file, its HF config.json as a dict, or {})."""
    if source in OFFICIAL:
        return download(source), {}
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
    try:
        with open(config) as f:
            hf = dict(json.load(f))
    except (ValueError, TypeError) as e:
        raise UserError(f"{config} is not a JSON object of GPT-2's settings ({e})") from None
    for k, ours in COMPUTES.items():  # another model's setting would change every logit
        if hf.get(k, ours[0]) not in ours:
            raise UserError(f"{config}: {k} {hf[k]!r} is not what this GPT-2 computes "
                            f"({ours[0]!r}, OpenAI's): it would change every logit")
    return files[0], hf


def download(name):
    """OpenAI's weights of an official size, downloaded once into torch.hub's cache -> path."""
    path = os.path.join(torch.hub.get_dir(), 'gpt2', f'{name}.safetensors')
    if not os.path.exists(path):
        url = WEIGHTS_URL.format(name=name)
        print(f"downloading {name} weights from {url} to {path}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, path, progress=True)  # a temp file, then a rename
        except OSError as e:  # urllib's URLError is an OSError
            raise UserError(f"could not download {name} from {url} ({e}); offline? download "
                            f"model.safetensors elsewhere and give its path instead of '{name}', "
                            f"or put it at {path}") from None
    return path


def read_weights(path):
    """A .safetensors or torch.save file -> its tensors on the CPU; a bad file is one line."""
    try:
        if path.endswith('.safetensors'):
            return safetensors.torch.load_file(path)
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated, corrupt, not weights at all, a pickle that runs code
        first = (str(e).splitlines() or [''])[0][:200]
        raise UserError(f"cannot read {path}: {type(e).__name__}: {first}") from None
