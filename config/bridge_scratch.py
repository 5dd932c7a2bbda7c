# The baseline: random-label training of a gpt2-medium-shaped network from scratch.
stage = 'bridge'
init_from = 'scratch'
model = 'gpt2-medium'
out_dir = 'out/bridge_scratch'
