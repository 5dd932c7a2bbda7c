"""
Text from GPT-2, to see that the weights model.py loads are OpenAI's (nanoGPT's sample.py).

  python sample.py gpt2 "Hello, I'm a language model,"      # gpt2[-medium|-large|-xl] or a path
  python sample.py gpt2 --num_samples 5 --max_new_tokens 100 --temperature 0.9 --top_k 50
"""
import hashlib
import os
import tempfile

import torch
import torch.nn.functional as F

from configurator import UserError, parse, pick_device, run_cli
from model import GPT, read_weights

start = "Hello, I'm a language model,"  # the prompt (also the second word of the command line)
num_samples = 2                         # samples drawn
max_new_tokens = 40                     # tokens generated after the prompt in each sample
temperature = 0.8                       # < 1: more likely tokens, > 1: more varied ones
top_k = 200                             # sample among the k likeliest tokens only; 0: all of them
seed = 1337                             # the sampling's seed
device = 'cpu'                          # auto, cuda, cuda:N, cpu or mps

RANGES = dict(num_samples=(1, 1e9), max_new_tokens=(1, 1e9), temperature=(1e-9, 1e9))
GPT2_BPE = tuple(f"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/{name}"
                 for name in ('vocab.bpe', 'encoder.json'))  # what tiktoken fetches for 'gpt2'


def byte_encoding():
    """A 256-token byte-level tiktoken encoding: for models whose vocabulary is not GPT-2's BPE."""
    import tiktoken
    return tiktoken.Encoding(name='bytes', pat_str=r"\S+|\s+", special_tokens={},
                             mergeable_ranks={bytes([i]): i for i in range(256)})


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. It downloads two files once into its cache: offline, the error says
    which files, where they are looked for, and how to bring them."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        raise UserError(tiktoken_offline(e)) from None


def tiktoken_offline(e):
    """The line for a GPT-2 encoding that cannot be had: tiktoken keeps each file it downloads in
    its cache folder ($TIKTOKEN_CACHE_DIR, else <tmp>/data-gym-cache) under the sha1 of its URL."""
    default = os.path.join(tempfile.gettempdir(), 'data-gym-cache')
    cache = os.environ.get('TIKTOKEN_CACHE_DIR') or os.environ.get('DATA_GYM_CACHE_DIR') or default
    names = [f"{hashlib.sha1(url.encode()).hexdigest()} ({os.path.basename(url)})"
             for url in GPT2_BPE]
    return (f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}): offline? tiktoken looks "
            f"in {cache} for {' and '.join(names)}; on a machine online, run python -c \"import "
            f"tiktoken; tiktoken.get_encoding('gpt2')\", copy those two files from its cache "
            f"({default} unless TIKTOKEN_CACHE_DIR is set there) into a folder here, and set "
            f"TIKTOKEN_CACHE_DIR to that folder")


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None):
    """Sample max_new_tokens after the (B, T) prompt idx; top_k keeps the k likeliest tokens."""
    for _ in range(max_new_tokens):
        logits = model.lm_logits(idx[:, -model.config.block_size:])[:, -1, :] / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float('Inf')
        next_id = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
        idx = torch.cat((idx, next_id), dim=1)
    return idx


def language_model(source):
    """GPT.from_pretrained(source), refusing bridge.py's image checkpoints with the reason."""
    if source.endswith(('.pt', '.pth')):
        weights = read_weights(source)
        if isinstance(weights, dict) and {'model', 'model_config', 'config'} <= weights.keys():
            raise UserError(f"{source} is an image model of bridge.py: it keeps no token embedding "
                            f"(wte), so it has no text to sample; sample from the language model "
                            f"it started from, {weights['config'].get('init_from', '?')}")
    model = GPT.from_pretrained(source).eval()
    if model.config.vocab_size < 256:  # byte-level tokens need 256; an export of export.py has 1
        raise UserError(f"{source} has a vocabulary of {model.config.vocab_size} tokens: sample.py "
                        f"reads GPT-2's BPE (50257) or bytes (at least 256 tokens)")
    return model


def main(argv):
    """python sample.py gpt2|PATH ["prompt"] [--flag value ...]."""
    if '-h' in argv or '--help' in argv:
        parse(['--help'], globals())
    if not argv or argv[0].startswith('-'):
        raise UserError('usage: python sample.py gpt2|gpt2-medium|gpt2-large|gpt2-xl|PATH '
                        '["prompt"] [--num_samples N --max_new_tokens N --temperature T '
                        '--top_k K --seed S --device D]')
    source, words = argv[0], argv[1:]
    prompt = [words.pop(0)] if words and not words[0].startswith('--') else []
    f = parse(['--start', *prompt, *words] if prompt else words, globals(), ranges=RANGES)[0]
    dev = pick_device(f.device)
    model = language_model(source).to(dev)
    if model.config.vocab_size == 50257:
        enc = gpt2_encoding()
    else:
        print(f"a vocabulary of {model.config.vocab_size} is not GPT-2's BPE: byte-level tokens")
        enc = byte_encoding()
    torch.manual_seed(f.seed)
    tokens = enc.encode(f.start)
    if not tokens and enc.name == 'gpt2':
        print("an empty prompt: sampling from <|endoftext|>, as GPT-2's unconditional samples do")
        tokens = [enc.eot_token]
    if not tokens:
        raise UserError("the prompt is empty: a byte-level model needs at least one character")
    idx = torch.tensor([tokens] * f.num_samples, device=dev)
    out = generate(model, idx, f.max_new_tokens, f.temperature, f.top_k or None)
    for row in out.tolist():
        print('---\n' + enc.decode([t for t in row if t < enc.n_vocab]))


if __name__ == '__main__':
    run_cli(main)
