# The README's CPU example, stage 2: fine-tune the digits bridge on the true labels (the hand-off
# keeps its dataset, data_dir, img_size and patch_size). python bridge.py config/digits_finetune.py
stage = 'finetune'
init_from = 'out/digits_bridge/ckpt.pt'
out_dir = 'out/digits_finetune'
max_iters = 200
eval_interval = 100
lr = 1e-3
aug = 'none'
device = 'cpu'
compile = False
