# Transfer: the CIFAR-10 partial bridge (config/bridge_p5.py), fine-tuned on Tiny-ImageNet (the
# first author's downstream set; a new head for its 200 classes).
stage = 'finetune'
init_from = 'out/bridge_p5/ckpt.pt'
dataset = 'tinyimagenet'
epochs = 200
out_dir = 'out/ft_tiny'
