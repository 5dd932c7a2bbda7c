# The baseline of config/finetune_c10.py: a gpt2-medium-shaped network from scratch, fine-tuned on
# CIFAR-10's true labels with the same budget.
stage = 'finetune'
init_from = 'scratch'
model = 'gpt2-medium'
epochs = 200
out_dir = 'out/scratch_c10'
