# The README's CPU example, stage 1: a 4x128 GPT-2 from scratch on scikit-learn's 8x8 digits
# (python prepare.py digits data/digits first). python bridge.py config/digits_bridge.py
stage = 'bridge'
init_from = 'scratch'
model = '4x128'
dataset = 'folder'
data_dir = 'data/digits'
img_size = 16
patch_size = 4
aug = 'none'
max_iters = 200
lr = 1e-3
eval_interval = 100
device = 'cpu'
compile = False
out_dir = 'out/digits_bridge'
