# The paper: partial bridge training, the first five blocks and the position table kept at their
# language weights (--freeze 0-5, as the first author's code froze wte, wpe and blocks 0-4).
stage = 'bridge'
init_from = 'gpt2-medium'
freeze = '0-5'
out_dir = 'out/bridge_p5'
