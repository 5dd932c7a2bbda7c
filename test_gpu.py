"""The GPU checks (.ci/gpu runs them on one CUDA GPU; skipped without one): flash attention, compile
with bf16, fused AdamW on CUDA, a timed gpt2-medium bridge run, NCCL DDP."""
import re
import subprocess
import sys

import pytest
import torch

import bridge
import data
from conftest import HERE, metrics
from model import GPT, GPTConfig


def relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (run .ci/gpu on one)')


def gpu_net(n_layer=2, n_head=16, n_embd=1024, seed=0):
    """A random GPT-2 image model at the paper's 224/16 (196 tokens) on the GPU."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=0, n_classes=10, img_size=224,
                         patch_size=16)).cuda()


@pytest.mark.gpu
@gpu
def test_gpu_attention_runs_on_the_flash_kernel_forward_and_backward():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    net, x = gpu_net(), torch.randn(8, 3, 224, 224, device='cuda')
    results = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):  # flash raises if it cannot run these inputs
        net.zero_grad()
        with sdpa_kernel(backend), torch.autocast('cuda', dtype=torch.bfloat16):
            out = net(x).float()
        out.square().mean().backward()
        results.append((out.detach(), net.patch.weight.grad.clone()))
    (flash, flash_grad), (math_out, math_grad) = results
    assert relative(flash, math_out) < 2e-2 and relative(flash_grad, math_grad) < 5e-2


@pytest.mark.gpu
@gpu
def test_gpu_compiled_bf16_training_steps_match_eager():
    losses = {}
    for compiled in (False, True):
        net = gpu_net(n_layer=4, n_head=8, n_embd=512)
        opt = net.configure_optimizers(0.05, 1e-4, (0.9, 0.999))
        step_net = torch.compile(net) if compiled else net
        g = torch.Generator('cuda').manual_seed(1)
        losses[compiled] = []
        for _ in range(3):
            x = torch.randn(16, 3, 224, 224, device='cuda', generator=g)
            y = torch.randint(0, 10, (16,), device='cuda', generator=g)
            with torch.autocast('cuda', dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(step_net(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[compiled].append(loss.item())
        losses[compiled].append(net.head.weight.detach().clone())
    *eager, w_eager = losses[False]
    *compiled, w_compiled = losses[True]
    assert compiled == pytest.approx(eager, rel=2e-2) and relative(w_compiled, w_eager) < 2e-2


@pytest.mark.gpu
@gpu
def test_gpu_fused_adamw_takes_the_step_of_the_unfused_one(capsys):
    weights = []
    for fused in (False, True):
        net = gpu_net(n_layer=2, n_head=4, n_embd=256)
        opt = net.configure_optimizers(0.05, 1e-3, (0.9, 0.999))
        assert opt.defaults['fused'] is True
        if not fused:
            groups = [dict(params=g['params'], weight_decay=g['weight_decay']) for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999))
        x = torch.randn(8, 3, 224, 224, device='cuda', generator=torch.Generator('cuda').manual_seed(1))
        for _ in range(3):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        weights.append(net.state_dict())
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@gpu
def test_gpu_bridge_run_of_a_gpt2_medium_sized_model_on_cifar_sized_data(tmp_path, monkeypatch, capsys):
    """The main job's path, timed: random gpt2-medium weights, 224/16, 50,000 + 10,000 uint8 32x32 images."""
    class SyntheticCIFAR:  # torchvision's interface, CIFAR-10's sizes: nothing to download
        url, filename = '', ''

        def __init__(self, root, train, download):
            n, g = (50_000 if train else 10_000), torch.Generator().manual_seed(int(train))
            self.data = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g).numpy()
            self.targets, self.classes = torch.randint(0, 10, (n,), generator=g).tolist(), [str(k) for k in range(10)]
    monkeypatch.setitem(data.CIFAR, 'cifar10', SyntheticCIFAR)
    torch.cuda.reset_peak_memory_stats()
    result = bridge.main(['--init_from', 'scratch', '--model', 'gpt2-medium', '--out_dir', str(tmp_path / 'r'),
                          '--max_iters', '120', '--log_interval', '20', '--eval_interval', '120'])
    out = capsys.readouterr().out
    speed = re.findall(r'step (\d+)/120 .*\| ([\d.]+) img/s( \| mfu ([\d.]+)%)?', out)
    first, steady = float(speed[0][1]), float(speed[-1][1])  # the first 20 steps include compiling
    assert '--compile auto: torch.compile' in out and result['iter'] == 120 and len(speed) == 6
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    with capsys.disabled():
        print(f"\nGPU bridge run, gpt2-medium 224/16, batch 64, bf16, compiled on {torch.cuda.get_device_name()}: "
              f"{steady:.0f} images/s, MFU {speed[-1][3] or '?'}%, peak memory {peak:.1f} GiB, compile about "
              f"{20 * 64 / first - 20 * 64 / steady:.0f} s; test accuracy {result['test_acc']:.3f}")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two CUDA GPUs')
def test_gpu_two_process_nccl_ddp_trains(folder, tmp_path):
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        'bridge.py', '--dataset', 'folder', '--data_dir', folder, '--out_dir', str(tmp_path / 'ddp'),
                        '--init_from', 'scratch', '--model', '2x64', '--img_size', '16', '--patch_size', '4',
                        '--max_iters', '6', '--batch_size', '8', '--eval_interval', '3', '--num_workers', '0'],
                       cwd=HERE, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and 'device cuda:0, bfloat16, 2 processes' in r.stdout, r.stderr
    assert [m['iter'] for m in metrics(tmp_path / 'ddp')] == [3, 6]
