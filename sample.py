"""
Text from GPT-2, to see that the weights model.py loads are OpenAI's (nanoGPT's sample.py).

  python sample.py gpt2 "Hello, I'm a language model,"   # gpt2[-medium|-large|-xl] or a path
"""
import torch
import torch.nn.functional as F

from configurator import UserError, run_cli
from model import GPT


def byte_encoding():
    """A 256-token byte-level tiktoken encoding: for models whose vocabulary is not GPT-2's BPE."""
    import tiktoken
    return tiktoken.Encoding(name='bytes', pat_str=r"\S+|\s+", special_tokens={},
                             mergeable_ranks={bytes([i]): i for i in range(256)})


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. It downloads two files once: offline, the error names them."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        raise UserError(f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}): it fetches "
                        f"vocab.bpe and encoder.json from https://openaipublic.blob.core."
                        f"windows.net/gpt-2/encodings/main/ once; offline, copy the "
                        f"TIKTOKEN_CACHE_DIR of a machine that ran this online") from None


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


def main(argv):
    """python sample.py gpt2|PATH ["prompt"]: two samples of 40 tokens."""
    if argv in (['-h'], ['--help']):
        return print(__doc__.strip())
    if len(argv) not in (1, 2) or argv[0].startswith('-'):
        raise UserError('usage: python sample.py gpt2|gpt2-medium|gpt2-large|gpt2-xl|PATH '
                        '["prompt"]')
    model = GPT.from_pretrained(argv[0]).eval()
    if model.config.vocab_size == 50257:
        enc = gpt2_encoding()
    else:
        print(f"a vocabulary of {model.config.vocab_size} is not GPT-2's BPE: byte-level tokens")
        enc = byte_encoding()
    prompt = argv[1] if len(argv) == 2 else "Hello, I'm a language model,"
    torch.manual_seed(1337)
    idx = torch.tensor([enc.encode(prompt)] * 2)
    for row in generate(model, idx, 40, temperature=0.8, top_k=200).tolist():
        print('---\n' + enc.decode([t for t in row if t < enc.n_vocab]))


if __name__ == '__main__':
    run_cli(main)
