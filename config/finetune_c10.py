# The paper: fine-tune the partial bridge (config/bridge_p5.py) on CIFAR-10's true labels; 200
# epochs, as the first author's code does for its supervised runs.
stage = 'finetune'
init_from = 'out/bridge_p5/ckpt.pt'
epochs = 200
out_dir = 'out/ft_c10'
