"""
A bridged backbone, out as a transformers GPT-2: what the ecosystem loads (LLaVA-style towers,
probes, heads of your own), with the image parts beside it and a model card.

  python export.py out/bridge/ckpt.pt out/bridge_hf    # a checkpoint's weights
  python export.py out/bridge out/bridge_start_hf      # a run directory: its step 0

It writes config.json and model.safetensors (transformers' GPT2Model, OpenAI's layout: the four
Conv1D weights stored [in, out]), image.safetensors (the patch embedding and the classifier head),
image_config.json (image and patch size, classes, normalization), preprocessor_config.json (what
bridge.py's evaluation does to an image file) and README.md. The image model has no token
embedding: its input is patch tokens (inputs_embeds). GPT2Model needs a wte all the same, so wte
is a 1 x n_embd row of zeros, a placeholder that nothing reads.
"""
import os
import shutil
import tempfile

import torch

from analysis import load_run
from configurator import UserError, run_cli, to_json
from data import DATASETS
from model import CONV1D

FILES = ('config.json', 'model.safetensors', 'image.safetensors', 'image_config.json',
         'preprocessor_config.json', 'README.md')


def main(argv):
    if '-h' in argv or '--help' in argv:
        return print(__doc__.strip())
    if len(argv) != 2 or any(a.startswith('-') for a in argv):
        raise UserError(f"usage: python export.py CKPT_OR_RUN_DIR OUT_DIR, not "
                        f"{' '.join(argv) or 'nothing'} (see --help)")
    src, out = argv
    target = where_to_write(out)
    whole(target, lambda folder: export_run(src, out, folder))
    print(f"wrote {', '.join(FILES)} to {out}: GPT2Model.from_pretrained('{out}') loads it")
    return out


def where_to_write(out):
    """The folder an export goes to (a link's target), checked before any work: new or empty."""
    if not out.strip():
        raise UserError("OUT_DIR is empty: name the folder to write the export into")
    if os.path.islink(out) and not os.path.exists(out):
        raise UserError(f"{out} is a link to {os.readlink(out)}, which does not exist")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"{out} exists and holds files: export.py writes only into a new or "
                        f"empty folder")
    return os.path.realpath(out)


def export_run(src, out, folder):
    """The export of src (a ckpt.pt or a run directory) into folder; out is the name it will have.
    Weights that are not finite (a diverged run) are refused, as --stage eval refuses them."""
    net, c, ckpt = load_run(src, 'cpu')
    bad = [k for k, v in net.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{src} holds weights that are not finite ({', '.join(bad[:2])}"
                        f"{', ...' * (len(bad) > 2)}): a diverged run; export an earlier "
                        f"checkpoint")
    start = os.path.isdir(src)  # a run directory stands for its step 0
    export(net, c, ckpt, src, out, start, folder)


def whole(out, write):
    """write(folder) into a new folder beside out, renamed to out once every file is in it: a
    killed or failed export leaves no half export that would load as a plain GPT-2."""
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.", dir=parent)
    except OSError as e:
        raise UserError(f"cannot write an export into {out}: {e.strerror}") from None
    mask = os.umask(0)  # mkdtemp's folder is private: the export gets a folder's usual mode
    os.umask(mask)
    try:
        os.chmod(tmp, 0o777 & ~mask)
        write(tmp)
        os.replace(tmp, out)  # a new name, or an empty folder's
    except OSError as e:
        raise UserError(f"cannot write the export {out}: {e.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export(net, c, ckpt, src, out, start, folder=None):
    """The files of the export out, from a network of model.py and the run it came from, written
    into folder (default: out itself)."""
    from safetensors.torch import save_file
    mc, sd = net.config, net.state_dict()
    gpt2 = {k.removeprefix('transformer.'): v.t() if k.endswith(CONV1D) else v
            for k, v in sd.items() if k.startswith('transformer.')}
    gpt2['wte.weight'] = torch.zeros(1, mc.n_embd)  # the placeholder: an image model reads no token
    image = {k: v for k, v in sd.items() if k.startswith(('patch.', 'head.'))}
    folder = folder or out
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in gpt2.items()},
              os.path.join(folder, 'model.safetensors'), metadata={'format': 'pt'})
    save_file({k: v.contiguous() for k, v in image.items()},
              os.path.join(folder, 'image.safetensors'), metadata={'format': 'pt'})
    hf = dict(model_type='gpt2', architectures=['GPT2Model'], n_layer=mc.n_layer,
              n_head=mc.n_head, n_embd=mc.n_embd, n_positions=mc.block_size, vocab_size=1,
              activation_function='gelu_new', resid_pdrop=mc.dropout, embd_pdrop=mc.dropout,
              attn_pdrop=mc.dropout, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0)
    mean, std = DATASETS[c.dataset]
    described = describe(c, ckpt, src, start)
    image_config = dict(img_size=mc.img_size, patch_size=mc.patch_size, n_classes=mc.n_classes,
                        classes=ckpt['data']['classes'], mean=mean, std=std, pooling='last token',
                        attention='causal', **described)
    # bridge.py's evaluation of an image file (data.decode), for transformers' image processors:
    # RGB, the shorter side resized to img_size (bicubic), the central square, the normalization
    processor = dict(image_processor_type='CLIPImageProcessor', do_convert_rgb=True,
                     do_resize=True, size=dict(shortest_edge=mc.img_size), resample=3,
                     do_center_crop=True, crop_size=dict(height=mc.img_size, width=mc.img_size),
                     do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=mean,
                     image_std=std)
    for name, content in (('config.json', hf), ('image_config.json', image_config),
                          ('preprocessor_config.json', processor)):
        with open(os.path.join(folder, name), 'w') as f:
            f.write(to_json(content, indent=1) + '\n')
    with open(os.path.join(folder, 'README.md'), 'w') as f:
        f.write(model_card(out, image_config, mc))


def describe(c, ckpt, src, start):
    """What the exported weights are: the run's stage, source, frozen blocks, data, step and
    test accuracy."""
    labels = 'true labels'
    if c.stage == 'bridge':
        labels = f"{c.random_label_fraction:.0%} random labels"
    last = ckpt['history'][-1] if ckpt['history'] and not start else {}
    return dict(exported_from=src, stage=f"{c.stage} ({labels})", init_from=c.init_from,
                frozen=c.freeze, dataset=f"{c.dataset} ({c.data_dir})",
                step=0 if start else ckpt['iter'], test_acc=last.get('test_acc'))


def model_card(out, image, mc):
    """README.md: what the export is, and the transformers code that rebuilds the classifier."""
    shown = dict(image, test_acc='-' if image['test_acc'] is None else f"{image['test_acc']:.2%}")
    rows = '\n'.join(f"| {k.replace('_', ' ')} | {shown[k]} |" for k in (
        'exported_from', 'stage', 'init_from', 'frozen', 'dataset', 'step', 'test_acc'))
    return f"""# A bridged GPT-2 image backbone ({mc.n_layer} layers x {mc.n_embd})

Exported by `export.py` of the reference implementation of Luo & Shen, *Language-Pretraining-Induced
Bias: A Strong Foundation for General Vision Tasks* (TMLR 2026).

| | |
|---|---|
{rows}
| images | {image['img_size']}px in {image['patch_size']}px patches, {image['n_classes']} classes |

- `config.json`, `model.safetensors`: transformers' `GPT2Model` in OpenAI's layout.
  `wte` is a 1 x {mc.n_embd} row of zeros, a placeholder: this image model has no token embedding
  (it reads patch tokens through `inputs_embeds`, never token ids), but `GPT2Model` has a `wte`.
- `image.safetensors`: the patch embedding (`patch.weight`, `patch.bias`: a Conv2d with kernel =
  stride = patch) and the classifier (`head.weight`, `head.bias`).
- `image_config.json`: image and patch size, the class names, the normalization, the pooling.
- `preprocessor_config.json`: what `bridge.py` does to an image file before it evaluates it, for
  transformers' image processors: RGB (grayscale and palette images too), the shorter side resized
  to {image['img_size']} px (bicubic), the central square, the normalization.

```python
import json, torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, GPT2Model

gpt2 = GPT2Model.from_pretrained('{out}').eval()
processor = AutoImageProcessor.from_pretrained('{out}')  # resize + normalize, as evaluated
parts, cfg = load_file('{out}/image.safetensors'), json.load(open('{out}/image_config.json'))

def classify(images):  # PIL images of any size and mode, or (B, 3, H, W) uint8 arrays
    pixels = processor(images, return_tensors='pt')['pixel_values']  # (B, 3, img_size, img_size)
    x = torch.nn.functional.conv2d(pixels, parts['patch.weight'], parts['patch.bias'],
                                   stride=cfg['patch_size'])
    tokens = x.flatten(2).transpose(1, 2)                        # (B, T, C): patches, row-major
    features = gpt2(inputs_embeds=tokens).last_hidden_state[:, -1]  # sees every patch
    return features @ parts['head.weight'].T + parts['head.bias']  # (B, n_classes) logits
```
"""


if __name__ == '__main__':
    run_cli(main)
