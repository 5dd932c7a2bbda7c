# The paper: partial bridge training, the first five blocks and the position table kept at their
# language weights (the first author's code freezes wpe too).
stage = 'bridge'
init_from = 'gpt2-medium'
freeze = '0-5,wpe'
out_dir = 'out/bridge_p5'
