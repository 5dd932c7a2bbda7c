# The paper: full bridge training of OpenAI's gpt2-medium on CIFAR-10 with 100% random labels
# (every other flag at bridge.py's defaults, which are the paper's).
stage = 'bridge'
init_from = 'gpt2-medium'
out_dir = 'out/bridge_full'
