"""
What a run guarantees (README, "What a run guarantees"): it resumes bit for bit; it never replaces
another run; checkpoints are written whole; a signal stops it after its step with a checkpoint, also
under torchrun and Slurm; a resume with another recipe or other data is refused; every user error
is one line. Also: flags and config files, --auto_resume, the cost line, compile.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import bridge
import configurator
from configurator import Stopped, UserError
from conftest import ENV, HERE, TINY, cli, make_folder, metrics, run
from test_bridge import interrupt_at


# ---------------------------------------------------------------- flags and config files
def test_flags_both_forms_types_ranges_and_help(capsys):
    c, given = configurator.parse(['--lr', '3e-4', '--batch_size=8', '--reinit_head=false', '--wandb',
                                   '--freeze', '0-5', '--compile', 'true'], vars(bridge), bridge.CHOICES,
                                  bridge.RANGES)
    assert (c.lr, c.batch_size, c.reinit_head, c.wandb, c.freeze, c.compile) == (3e-4, 8, False, True, '0-5', 'True')
    assert given == {'lr', 'batch_size', 'reinit_head', 'wandb', 'freeze', 'compile'} and c.epochs == 400
    with pytest.raises(SystemExit) as e:
        bridge.main(['--lr', '1', '-h'])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(bridge.__doc__.strip().splitlines()[0])
    for name, (default, comment) in configurator.flags_of(vars(bridge)).items():  # every flag line, as written
        assert re.search(rf"^  --{name} +{re.escape(default)} +{re.escape(comment)}$", out, re.M), name


def test_a_config_file_is_flag_lines_checked_like_flags_in_order_with_them(digits, tmp_path):
    """nanoGPT's way: python bridge.py config/NAME.py [--flag value ...]; the README's CPU example is one."""
    out = tmp_path / 'smoke'
    result = bridge.main(['--max_iters', '9', 'config/digits_bridge.py', '--data_dir', digits, '--out_dir', str(out),
                          '--max_iters', '4', '--eval_interval', '4', '--num_workers', '0'])
    c = json.load(open(out / 'config.json'))
    assert result['iter'] == 4 and c['model'] == '4x128' and c['img_size'] == 16 and c['lr'] == 1e-3
    assert c['compile'] == 'False' and c['aug'] == 'none'  # from the file; max_iters from the command line
    (tmp_path / 'bom.py').write_bytes('\ufefflr = 0.5\n'.encode())  # a byte-order mark is fine
    assert configurator.parse([str(tmp_path / 'bom.py')], vars(bridge))[0].lr == 0.5
    for text, error in ((b"lr = 'fast'\n", r"bad.py, line 1: --lr 'fast': expected a number"),
                        (b"epoch = 3\n", r"bad.py, line 1: unknown flag 'epoch' .*did you mean --epochs"),
                        (b"import os\n", r"bad.py, line 1: a config file holds flag lines `name = value` only"),
                        (b"lr = 1e-3 * 2\n", r"bad.py, line 1: the value of lr is not a literal"),
                        (b"lr = {[1]: 2}\n", r"bad.py, line 1: the value of lr is not a literal"),
                        (b"lr = (\n", r"bad.py, line 1: not Python"),
                        (b"lr = '\xff'\n", r"config file .*bad.py is not UTF-8 text"),
                        (b"aug = 'flip'\n", r"bad.py, line 1: --aug 'flip' is not one of rrc, crop, none")):
        (tmp_path / 'bad.py').write_bytes(text)
        with pytest.raises(UserError, match=error):
            bridge.main(['--lr', '0.1', str(tmp_path / 'bad.py')])  # after a flag, too
    with pytest.raises(UserError, match=r'config file .*none.py: No such file or directory'):
        bridge.main([str(tmp_path / 'none.py')])
    for name in sorted(os.listdir(os.path.join(HERE, 'config'))):  # every shipped file parses as bridge.py's flags
        configurator.parse([os.path.join('config', name)], vars(bridge), bridge.CHOICES, bridge.RANGES)


def test_cli_errors_are_one_line_without_traceback_and_checked_before_data(tmp_path, monkeypatch):
    """A missing --init_from is named before CIFAR would be downloaded (no network here)."""
    r = cli('bridge.py', '--stage', 'finetune', '--init_from', str(tmp_path / 'ckpt.pt'), '--data_dir',
            str(tmp_path / 'nodata'), '--device', 'cpu')
    assert r.returncode == 1 and r.stderr.startswith('error: ') and r.stderr.count('\n') == 1, r.stderr
    assert 'no checkpoint at' in r.stderr and not os.path.exists(tmp_path / 'nodata')
    monkeypatch.setattr(sys, 'argv', ['bridge.py', '--batchsize', '3'])
    with pytest.raises(SystemExit) as e:  # exit status 1, with this line on stderr
        configurator.run_cli(bridge.main)
    assert re.fullmatch(r"error: unknown flag '--batchsize' .*; did you mean --batch_size, --patch_size\?", e.value.code)


# ---------------------------------------------------------------- a run's folder
def test_a_fresh_run_never_replaces_a_run_and_touches_no_file_it_did_not_write(folder, tmp_path):
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16', '--eval_interval', '1')
    before = {f: (tmp_path / 'r' / f).read_bytes() for f in os.listdir(tmp_path / 'r')}
    with pytest.raises(UserError, match=r'r holds a run \(ckpt.pt, metrics.jsonl, config.json\): continue it '
                                        r'with --init_from resume, or its command with --auto_resume True'):
        run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16')
    assert {f: (tmp_path / 'r' / f).read_bytes() for f in os.listdir(tmp_path / 'r')} == before
    (tmp_path / 'gone').mkdir()
    os.symlink(tmp_path / 'unmounted' / 'ckpt.pt', tmp_path / 'gone' / 'ckpt.pt')  # a disk that is not mounted
    with pytest.raises(UserError, match=r'gone holds a run \(ckpt.pt\)'):
        run(folder, tmp_path / 'gone', '--max_iters', '2')
    assert os.path.islink(tmp_path / 'gone' / 'ckpt.pt')
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'thesis.tex').write_text('two years of work')
    run(folder, mine, '--max_iters', '2', '--batch_size', '16')
    assert sorted(os.listdir(mine)) == ['ckpt.pt', 'config.json', 'metrics.jsonl', 'thesis.tex']
    assert (mine / 'thesis.tex').read_text() == 'two years of work'


def test_checkpoints_go_through_a_temporary_file_fsynced_then_renamed(folder, tmp_path, monkeypatch):
    calls = []
    for name in ('fsync', 'replace'):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, real=real, name=name: calls.append((name, a)) or real(*a))
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16')
    replaced = [os.path.basename(a[1]) for name, a in calls if name == 'replace']
    assert replaced == ['ckpt.pt', 'metrics.jsonl', 'config.json']
    assert [name for name, _ in calls] == ['fsync', 'replace'] * 3  # each file on disk before its rename
    assert all(a[0] == a[1] + '.tmp' for name, a in calls if name == 'replace')


def test_a_failed_write_is_one_line_and_the_last_checkpoint_stays(folder, tmp_path, capsys):
    out = tmp_path / 'r'
    run(folder, out, '--max_iters', '4', '--batch_size', '16', '--eval_interval', '2')
    before = (out / 'ckpt.pt').read_bytes()
    os.symlink('/dev/full', out / 'ckpt.pt.tmp')  # every write there: ENOSPC, a full disk
    capsys.readouterr()
    with pytest.raises(UserError, match=r'cannot write .*r/ckpt.pt at step 6 \(No space left on device\): '
                                        r'stopped; ckpt.pt keeps step 4'):
        run(folder, out, '--max_iters', '6', '--batch_size', '16', '--init_from', 'resume')
    assert (out / 'ckpt.pt').read_bytes() == before
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'config.json', 'metrics.jsonl']
    assert 'saved' not in capsys.readouterr().out


def test_divergence_never_writes_a_checkpoint_and_eval_prints_valid_json(folder, tmp_path, monkeypatch, capsys):
    args = ['--max_iters', '9', '--batch_size', '16', '--eval_interval', '3', '--log_interval', '1']
    real = bridge.lr_at
    monkeypatch.setattr(bridge, 'lr_at', lambda it, *a: real(it, *a) if it < 3 else 1e30)  # diverges after step 3
    with pytest.raises(UserError, match=r'loss nan at step [4-6]: stopped; in .*b, ckpt.pt keeps step 3; try a lower'):
        run(folder, tmp_path / 'b', *args)
    good = torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=True)
    assert good['iter'] == 3 and [m['iter'] for m in metrics(tmp_path / 'b')] == [3]
    bad = dict(good, model={k: v * float('nan') if k == 'head.weight' else v for k, v in good['model'].items()})
    torch.save(bad, tmp_path / 'nan.pt')
    capsys.readouterr()
    with pytest.raises(UserError, match=r'nan.pt: test loss nan: it diverged'):
        bridge.main(['--stage', 'eval', '--init_from', str(tmp_path / 'nan.pt'), '--device', 'cpu'])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c))['test_loss'] is None


# ---------------------------------------------------------------- resume: refused with another recipe or data
def test_resume_refuses_another_recipe_and_other_data_but_takes_moved_data(folder, tmp_path):
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16')
    with pytest.raises(UserError, match=r"continues .*r as it was: --lr 1.0 is not the run's 0.00025 \(a resume may "
                                        r"change only --out_dir, --data_dir, --epochs"):
        run(folder, tmp_path / 'r', '--max_iters', '4', '--batch_size', '16', '--init_from', 'resume', '--lr', '1')
    moved = shutil.copytree(folder, tmp_path / 'moved')
    assert run(str(moved), tmp_path / 'r', '--max_iters', '3', '--batch_size', '16', '--init_from', 'resume')['iter'] == 3
    other = make_folder(tmp_path / 'other', seed=1, noise=80)  # the same names, classes, counts and labels
    with pytest.raises(UserError, match=r'is not the data .*r trained on: its files differ'):
        run(other, tmp_path / 'r', '--max_iters', '4', '--init_from', 'resume')
    three = make_folder(tmp_path / 'three', n_classes=3, n_train=8, n_val=4)
    with pytest.raises(UserError, match=r'is not the data .*r trained on: its classes, train, test, files differ'):
        run(three, tmp_path / 'r', '--max_iters', '4', '--init_from', 'resume')


def test_a_run_made_before_a_new_flag_resumes_with_its_default(folder, tmp_path, capsys):
    """A fork adds a flag line: a run made before it resumes with the flag's default, and says so; another
    value is refused, as any change to a run is. (A checkpoint without grad_clip stands for that run.)"""
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16')
    ckpt = torch.load(tmp_path / 'r' / 'ckpt.pt', weights_only=True)
    del ckpt['config']['grad_clip']
    torch.save(ckpt, tmp_path / 'r' / 'ckpt.pt')
    with pytest.raises(UserError, match=r"--grad_clip 0.5 is not the run's 1.0"):
        run(folder, tmp_path / 'r', '--max_iters', '4', '--init_from', 'resume', '--grad_clip', '0.5')
    assert run(folder, tmp_path / 'r', '--max_iters', '4', '--init_from', 'resume')['iter'] == 4
    assert f"{tmp_path / 'r'}/ckpt.pt predates --grad_clip 1.0: the run resumes with its default" in \
        capsys.readouterr().out


def test_timed_checkpoints_come_whatever_the_epoch_and_a_crash_after_one_resumes_bit_for_bit(folder, tmp_path,
                                                                                                monkeypatch):
    args = ['--max_iters', '12', '--batch_size', '16', '--eval_interval', '100', '--log_interval', '1', '--seed', '3']
    full = run(folder, tmp_path / 'full', *args, '--ckpt_minutes', '0')
    real = bridge.lr_at

    def slow(it, *a):  # steps 3 and 8 take 0.8 s: more than --ckpt_minutes 0.01 (0.6 s) each; step 10 crashes
        if it in (3, 8):
            time.sleep(0.8)
        if it == 10:
            raise RuntimeError('the machine went away')  # kill -9, a lost node: no checkpoint at the end
        return real(it, *a)
    monkeypatch.setattr(bridge, 'lr_at', slow)
    with pytest.raises(RuntimeError, match='the machine went away'):
        run(folder, tmp_path / 'cut', *args, '--ckpt_minutes', '0.01')
    assert [m['iter'] for m in metrics(tmp_path / 'cut')] == [4, 9]  # the minutes passed, not an epoch's end
    monkeypatch.setattr(bridge, 'lr_at', real)
    resumed = run(folder, tmp_path / 'cut', *args, '--ckpt_minutes', '0.01', '--init_from', 'resume')
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('full', 'cut'))
    assert a['iter'] == b['iter'] == 12 and resumed['test_loss'] == full['test_loss']
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


# ---------------------------------------------------------------- --auto_resume: the same command is the same run
def test_auto_resume_continues_only_the_same_commands_run(folder, tmp_path, capsys):
    args = ['--max_iters', '4', '--batch_size', '16', '--auto_resume', 'True']
    run(folder, tmp_path / 'r', *args, '--freeze', '0-1')
    assert 'holds no checkpoint: starting the run' in capsys.readouterr().out
    with pytest.raises(UserError, match=r"--auto_resume: .*r holds another command's run: --freeze 'none' is not the "
                                        r"run's '0-1' \(a flag left out counts as its default\)"):
        run(folder, tmp_path / 'r', *args)                               # left out: its default, not the run's
    with pytest.raises(UserError, match=r"--lr 0.001 is not the run's 0.00025; --stage 'finetune' is not"):
        run(folder, tmp_path / 'r', *args, '--freeze', '0-1', '--lr', '1e-3', '--stage', 'finetune')
    done = run(folder, tmp_path / 'r', *args, '--freeze', '0-1')       # the same command, finished: nothing to do
    assert done['iter'] == 4 and 'finished at step 4: nothing to train' in capsys.readouterr().out
    more = run(folder, tmp_path / 'r', *args[2:], '--max_iters', '6', '--freeze', '0-1')  # more steps: continued
    assert more['iter'] == 6 and 'holds this run at step 4: continuing it' in capsys.readouterr().out


def test_auto_resume_takes_over_no_finished_run_made_without_it(folder, tmp_path):
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '16')
    before = (tmp_path / 'r' / 'ckpt.pt').read_bytes()
    with pytest.raises(UserError, match=r'r holds a finished run made without --auto_resume, which --auto_resume '
                                        r'does not take over: continue it with --init_from resume'):
        run(folder, tmp_path / 'r', '--max_iters', '4', '--batch_size', '16', '--auto_resume', 'True')
    assert (tmp_path / 'r' / 'ckpt.pt').read_bytes() == before


def test_a_fine_tune_whose_start_checkpoint_changed_is_refused(folder, tmp_path):
    run(folder, tmp_path / 'b', '--max_iters', '2', '--batch_size', '16', '--auto_resume', 'True')
    tune = ['--stage', 'finetune', '--init_from', str(tmp_path / 'b' / 'ckpt.pt'), '--max_iters', '2',
            '--batch_size', '16', '--auto_resume', 'True', '--device', 'cpu', '--num_workers', '0', '--out_dir',
            str(tmp_path / 'f')]
    bridge.main(tune)
    run(folder, tmp_path / 'b', '--max_iters', '4', '--batch_size', '16', '--auto_resume', 'True')  # a larger budget
    with pytest.raises(UserError, match=r'f started from .*b/ckpt.pt at step 2, which now holds step 4 of the same '
                                        r'run: the start has changed since'):
        bridge.main([*tune[:5], '4', *tune[6:]])


# ---------------------------------------------------------------- signals: a stop after the step, with a checkpoint
def started(argv, marker, **kw):
    """A Popen of argv (text, piped), once a line of its stdout holds marker -> (process, lines so far)."""
    p = subprocess.Popen(argv, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kw)
    lines = [p.stdout.readline()]
    while marker not in lines[-1]:
        assert lines[-1] or p.poll() is None, ''.join(lines) + p.stderr.read()
        lines.append(p.stdout.readline())
    return p, lines


def test_a_signal_stops_the_run_after_its_step_with_a_checkpoint_and_exit_128_plus_it(folder, tmp_path):
    argv = [sys.executable, 'bridge.py', '--dataset', 'folder', '--data_dir', folder, '--out_dir', str(tmp_path / 'r'),
            *TINY, '--max_iters', '100000', '--batch_size', '16', '--eval_interval', '1000']
    p, _ = started(argv, 'step ')
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    step = int(re.search(r'stopped by SIGTERM at step (\d+), with a checkpoint', out)[1])
    assert 'SIGTERM: the run stops with a checkpoint when this step ends' in err
    assert torch.load(tmp_path / 'r' / 'ckpt.pt', weights_only=True)['iter'] == step
    resumed = run(folder, tmp_path / 'r', '--max_iters', str(step + 2), '--batch_size', '16', '--eval_interval', '1000',
                  '--init_from', 'resume')
    assert resumed['iter'] == step + 2


@pytest.mark.parametrize('sig, status', [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 138)])
def test_a_stopped_run_exits_128_plus_its_signal(sig, status, monkeypatch):
    def stopped(argv):
        raise Stopped(sig)
    monkeypatch.setattr(sys, 'argv', ['bridge.py'])
    with pytest.raises(SystemExit) as e:
        configurator.run_cli(stopped)
    assert e.value.code == status  # never 0: `bridge.py ... && bridge.py --stage finetune ...` stops


def test_wandb_without_its_package_is_one_line_before_any_work(folder, tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'wandb' else real(name, *a))
    with pytest.raises(UserError, match=r'^--wandb True needs the wandb package: pip install wandb$'):
        run(folder, tmp_path / 'r', '--wandb')
    assert not os.path.exists(tmp_path / 'r')


def test_a_signal_during_start_up_stops_at_once_and_hands_the_handlers_back(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(bridge, 'load_dataset', lambda *a: signal.raise_signal(signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Stopped) as e:
        run(folder, tmp_path / 'r', '--max_iters', '2')
    assert e.value.signum == signal.SIGINT and e.value.result is None and os.listdir(tmp_path / 'r') == []
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.undo()
    interrupt_at(3, monkeypatch, signal.SIGUSR1)  # slurm.sh's signal: after the step too
    with pytest.raises(Stopped) as e:
        run(folder, tmp_path / 'u', '--max_iters', '20', '--batch_size', '8', '--grad_accum', '3')
    assert e.value.signum == signal.SIGUSR1 and e.value.result['iter'] == 4


def test_two_ranks_under_torchrun_stop_together_at_a_signal_whatever_the_log_interval(folder, tmp_path):
    """torchrun passes SIGTERM on to its ranks (and kills them 30 s later): they agree on a step within one
    step, not at the next progress line, and rank 0 writes the checkpoint."""
    argv = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'bridge.py',
            '--dataset', 'folder', '--data_dir', folder, '--out_dir', str(tmp_path / 'r'), *TINY, '--max_iters',
            '100000', '--batch_size', '8', '--log_interval', '100000', '--eval_interval', '5']
    p, lines = started(argv, 'eval step 5:')
    start = time.time()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    ckpt = torch.load(tmp_path / 'r' / 'ckpt.pt', weights_only=True)
    assert time.time() - start < 25 and ckpt['world'] == 2 and 5 < ckpt['iter'] < 100000, err[-2000:]
    assert f"stopped by SIGTERM at step {ckpt['iter']}, with a checkpoint" in out
    assert [m['iter'] for m in metrics(tmp_path / 'r')][-1] == ckpt['iter']  # written once, by rank 0


FAKES = {  # Slurm's commands as they behave, for slurm.sh, on one machine (FAKE_SLURM: their state)
    'srun': r'''#!/usr/bin/env bash
# srun: runs the task as a job step; passes signals on, but SIGTERM becomes SIGKILL for every process
# of the step (Slurm's _srun_signal_mgr, "forcing job termination")
tree() { echo "$1"; for c in $(pgrep -P "$1"); do tree "$c"; done; }
while [[ "$1" == --* ]]; do shift; done
echo "$*" >> "$FAKE_SLURM/srun.log"
"$@" &
task=$!
echo "$task" > "$FAKE_SLURM/step"
trap 'kill -KILL $(tree "$task") 2>/dev/null' TERM
trap 'kill -USR1 "$task"' USR1
wait "$task"; rc=$?
while kill -0 "$task" 2>/dev/null; do wait "$task"; rc=$?; done
exit "$rc"
''',
    'scancel': r'''#!/usr/bin/env bash
# scancel --signal=SIG JOBID: SIG to every process of the job's steps (their cgroup), not to the batch script
tree() { echo "$1"; for c in $(pgrep -P "$1"); do tree "$c"; done; }
kill -"${1#--signal=}" $(tree "$(cat "$FAKE_SLURM/step")") 2>/dev/null
exit 0
''',
    'scontrol': r'''#!/usr/bin/env bash
case "$1" in
  show) echo localhost ;;
  requeue) echo "$2" >> "$FAKE_SLURM/requeued" ;;
esac
'''}


def slurm_job(tmp_path, job, out, flags):
    """slurm.sh as sbatch starts it on one node of 2 "GPUs" (CPU ranks), with the fake Slurm commands."""
    fakes = tmp_path / 'bin'
    fakes.mkdir(exist_ok=True)
    for name, text in FAKES.items():
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    env = {**ENV, 'PATH': f"{fakes}:{os.environ['PATH']}", 'FAKE_SLURM': str(tmp_path), 'SLURM_JOB_ID': str(job),
           'SLURM_JOB_NAME': 'bridge', 'SLURM_JOB_NUM_NODES': '1', 'SLURM_JOB_NODELIST': 'localhost',
           'SLURM_GPUS_ON_NODE': '2', 'OUT': str(out)}
    return subprocess.Popen(['bash', 'slurm.sh', *flags], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_a_preempted_slurm_job_requeues_and_ends_as_an_uninterrupted_run(folder, tmp_path):
    flags = ['--dataset', 'folder', '--data_dir', folder, *TINY, '--max_iters', '300', '--batch_size', '8',
             '--log_interval', '100000', '--eval_interval', '5']
    job = slurm_job(tmp_path, 4242, tmp_path / 'cut', flags)
    line = job.stdout.readline()
    while 'eval step 5:' not in line:
        assert line or job.poll() is None, job.stderr.read()[-3000:]
        line = job.stdout.readline()
    job.send_signal(signal.SIGUSR1)  # Slurm's --signal=B:USR1@300, to the batch script
    out, err = job.communicate(timeout=120)
    ckpt = torch.load(tmp_path / 'cut' / 'ckpt.pt', weights_only=True)
    assert (tmp_path / 'requeued').read_text() == '4242\n' and 5 < ckpt['iter'] < 300, err[-3000:]
    assert f"stopped by SIGUSR1 at step {ckpt['iter']}, with a checkpoint" in out
    again = slurm_job(tmp_path, 4242, tmp_path / 'cut', flags)  # the requeued job: the very same command
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and f"holds this run at step {ckpt['iter']}: continuing it" in out, err[-3000:]
    whole = slurm_job(tmp_path, 4243, tmp_path / 'whole', flags)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('whole', 'cut'))
    assert a['iter'] == b['iter'] == 300 and b['world'] == 2
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    assert torch.equal(a['optimizer']['state'][0]['exp_avg_sq'], b['optimizer']['state'][0]['exp_avg_sq'])
    ports = re.findall(r'--rdzv_endpoint localhost:(\d+)', (tmp_path / 'srun.log').read_text())
    assert len(ports) == 3 and ports[0] == ports[1] != ports[2]  # a rendezvous port per job


# ---------------------------------------------------------------- what a run says, and costs
def test_a_run_says_what_it_will_cost_before_it_trains(folder, tmp_path, capsys):
    from model import GPT, GPTConfig
    run(folder, tmp_path / 'r', '--max_iters', '3', '--batch_size', '16', '--grad_accum', '2')
    out = capsys.readouterr().out
    net = GPT(GPTConfig(n_layer=2, n_head=1, n_embd=64, vocab_size=0, n_classes=4, img_size=16, patch_size=4))
    flops, n = net.flops_per_image(), sum(p.numel() for p in net.parameters())
    line = re.search(r'^cost: 3 steps x 32 images = 96 images, (\S+) FLOPs to train \((\S+) an image\); each '
                     r'checkpoint ([\d.,]+) MB \(weights and AdamW.s moments\)$', out, re.M)
    assert line and float(line[1]) == pytest.approx(96 * flops, rel=0.01), out
    assert float(line[3]) == pytest.approx(12 * n / 1e6, abs=0.1)  # 4 bytes of weight + 8 of moments each
    assert out.index('cost:') < out.index('step 3/3') and 'done: bridge finished at step 3 after' in out
    size = os.path.getsize(tmp_path / 'r' / 'ckpt.pt')
    assert 12 * n < size < 12 * n + 200_000  # the checkpoint is what it said (+ labels, history, pickling)


def test_subset_is_a_seeded_class_balanced_part_of_the_training_split_and_fits_the_data(folder, tmp_path, capsys):
    run(folder, tmp_path / 'r', '--max_iters', '2', '--batch_size', '8', '--subset', '40', '--test_subset', '20')
    out = capsys.readouterr().out
    assert 'a seeded, class-balanced subset (seed 0): 40 of the 128 train images, 10-10 of each class' in out
    assert '20 of the 64 test images, 5-5 of each class' in out
    assert len(torch.load(tmp_path / 'r' / 'ckpt.pt', weights_only=True)['train_labels']) == 40
    assert metrics(tmp_path / 'r')[-1]['test_images'] == 20
    run(folder, tmp_path / 'big', '--max_iters', '2', '--batch_size', '8', '--subset', '400')
    assert '--subset 400: the train split holds 128 images, all of them used' in capsys.readouterr().out
    with pytest.raises(UserError, match=r"--subset 48 is not the run's 40"):
        run(folder, tmp_path / 'r', '--max_iters', '4', '--batch_size', '8', '--subset', '48', '--init_from', 'resume')


def test_silent_decisions_are_said(folder, hf_dir, tmp_path, capsys):
    bridge.main(['--stage', 'finetune', '--init_from', hf_dir[1], '--dataset', 'folder', '--data_dir', folder,
                 '--out_dir', str(tmp_path / 'ft'), '--img_size', '16', '--patch_size', '4', '--max_iters', '2',
                 '--batch_size', '16', '--device', 'cpu', '--num_workers', '0'])
    out = capsys.readouterr().out
    assert "finetune: from " + hf_dir[1] + "'s language weights, without a bridge stage" in out
    assert f'loaded GPT-2 2 layers x 64 wide, 4 heads from {hf_dir[1]}' in out and 'fused=True' in out
    assert 'device cpu, float32, 1 process' in out and '--compile auto: eager' in out  # compile: CUDA only
    run(folder, tmp_path / 'r', '--max_iters', '10', '--batch_size', '16', '--eval_interval', '5')
    capsys.readouterr()
    run(folder, tmp_path / 'r', '--max_iters', '20', '--batch_size', '16', '--eval_interval', '5', '--init_from',
        'resume')
    assert re.search(r'the schedule now ends at step 20: the learning rate goes from the run.s [0-9.]+e-06 \(step '
                     r'10\) to [0-9.]+e-04', capsys.readouterr().out)


def test_a_compiled_run_matches_eager_with_one_graph_to_train_and_one_to_evaluate(folder, tmp_path, monkeypatch):
    """torch.compile changes the speed, not the numbers (dropout off: compiled code draws its own bits). On
    the CPU through dynamo with the aot_eager backend (graphs, keys, numbers: 2 s, where inductor's C++
    kernels take 25 s to build); inductor's kernels are the GPU checks' (.ci/gpu)."""
    from torch._dynamo.utils import counters
    real = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda net: real(net, backend='aot_eager'))
    args = ['--max_iters', '4', '--batch_size', '24', '--eval_interval', '2', '--dropout', '0', '--aug', 'none']
    eager = run(folder, tmp_path / 'eager', *args)
    torch._dynamo.reset()
    counters.clear()
    compiled = run(folder, tmp_path / 'compiled', *args, '--compile', 'True')
    assert counters['stats']['unique_graphs'] == 2  # 64 test images in batches of 24: the last one is padded
    assert compiled['test_loss'] == pytest.approx(eager['test_loss'], rel=1e-4)
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True)['model'] for d in ('eager', 'compiled'))
    assert a.keys() == b.keys()  # plain keys: no _orig_mod
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- one-line user errors, all in one table
BASE = ['--dataset', 'folder', '--data_dir', '{folder}', '--out_dir', '{tmp}/run', '--max_iters', '1',
        '--device', 'cpu', '--compile', 'False', '--num_workers', '0']
SCRATCH = ['--init_from', 'scratch', '--model', '2x64', '--img_size', '16', '--patch_size', '4']
RESUME = [*BASE, '--init_from', 'resume', '--out_dir', '{run}']


@pytest.mark.parametrize('argv, message', [
    (['--lerning_rate', '1'], r"unknown flag '--lerning_rate' .*the flags are --stage, --init_from"),
    (['--batchsize=4'], r'did you mean --batch_size'),
    (['--batch_size', 'big'], r"--batch_size 'big': expected an integer"),
    (['--compile', 'maybe'], r"--compile 'maybe' is not one of auto, True, False"),
    (['--reinit_head', 'maybe'], r"--reinit_head 'maybe': expected True or False"),
    (['--stage', 'bridg'], r"--stage 'bridg' is not one of bridge, finetune, eval"),
    (['--lr'], r'--lr needs a value'),
    (['lr=3'], r"unknown flag 'lr=3'"),
    ([*BASE, '--lr', '-1e-3'], r'--lr -1e-3: must be >= 0'),
    ([*BASE, '--log_interval', '0'], r'--log_interval 0: must be >= 1'),
    ([*BASE, '--lr', 'nan'], r'--lr nan: expected a finite number'),
    ([*BASE, '--dropout', '1.5'], r'--dropout 1.5: must be in \[0, 1\]'),
    ([*BASE, '--random_label_fraction', '2'], r'--random_label_fraction 2: must be in \[0, 1\]'),
    ([*BASE, '--seed', '20000000000000'], r'--seed 20000000000000: must be in \[0, 4294967295\]'),
    ([*BASE, *SCRATCH, '--min_lr', '0.1', '--lr', '0.01'], r'--min_lr 0.1 is above --lr 0.01'),
    ([*BASE, '--device', 'meta'], r"--device 'meta': use auto, cuda, cuda:N, mps or cpu"),
    ([*BASE, '--device', 'mps'], r'--device mps: there is no such device here; use --device cpu'),
    ([*BASE, '--stage', 'finetune', '--random_label_mode', 'wrong'], r'--random_label_mode is for --stage bridge'),
    ([*BASE, *SCRATCH, '--random_label_mode', 'wrong', '--data_dir', '{one}'],
     r'--random_label_mode wrong draws any class but the true one: folder at .*one has a single class'),
    ([*BASE, '--init_from', 'scratch', '--model', '3x200'], r"--model '3x200': use gpt2, .* or LAYERSxWIDTH"),
    ([*BASE, '--init_from', 'gpt2', '--model', '2x64'], r'--model shapes a scratch model'),
    ([*BASE, *SCRATCH, '--freeze', '0-9'], r"bad --freeze item '0-9' in '0-9': this model has 2 blocks"),
    ([*BASE, *SCRATCH, '--freeze', 'all,patch,head'], r'--freeze all,patch,head leaves nothing to train'),
    ([*BASE, *SCRATCH, '--img_size', '18'], r'img_size 18 is not a multiple of patch_size 4'),
    ([*BASE, '--init_from', '/no/weights'], r'--init_from /no/weights: no such file or directory; use gpt2'),
    ([*BASE, '--init_from', '{tmp}/junk.pt'], r'cannot read .*junk.pt: '),
    ([*BASE, '--init_from', '{tmp}/old.pt'], r'old.pt is not a checkpoint of this bridge.py'),
    ([*BASE, '--init_from', '{tmp}/extra_key.pt'], r'extra_key.pt: its model_config has fields GPTConfig does not know'
                                                   r' \(rotary\)'),
    ([*BASE, '--stage', 'eval'], r'--stage eval needs --init_from a ckpt.pt of bridge.py, not gpt2-medium'),
    ([*BASE, '--init_from', '{run}/ckpt.pt', '--patch_size', '8'],
     r'--patch_size 8: .*ckpt.pt was trained with patch_size 4, part of its network'),
    ([*BASE, *SCRATCH, '--data_dir', '/no/data'], r'/no/data/train: No such file or directory'),
    ([*BASE, *SCRATCH, '--batch_size', '1000'], r'--batch_size 1000 x 1 processes exceeds the 128 training'),
    ([*BASE, '--stage', 'eval', '--init_from', '{run}/ckpt.pt', '--data_dir', '{three}'],
     r'ckpt.pt classifies 4 classes \(class0, .*\), folder at .*three has 3'),
    ([*BASE, *SCRATCH, '--out_dir', '{tmp}/junk.pt'], r"cannot create --out_dir '.*junk.pt': File exists"),
    ([*BASE, '--init_from', 'resume'], r'no checkpoint at .*run/ckpt.pt'),
    ([*RESUME, '--lr', '1'], r"continues .*bridge as it was: --lr 1.0 is not the run's 0.003"),
    ([*RESUME, '--stage', 'finetune'], r"--stage 'finetune' is not the run's 'bridge'"),
    ([*RESUME, '--patch_size', '8'], r"--patch_size 8 is not the run's 4"),
])
def test_user_errors(argv, message, folder, bridged, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('errors')
    (tmp / 'junk.pt').write_bytes(b'not a checkpoint at all')
    torch.save(dict(model={}, model_config={}, config={}, iter=3), tmp / 'old.pt')  # another version's
    good = torch.load(bridged / 'bridge' / 'ckpt.pt', weights_only=True)
    torch.save(dict(good, model_config=dict(good['model_config'], rotary=True)), tmp / 'extra_key.pt')
    three, one = (tmp_path_factory.getbasetemp() / name for name in ('three', 'one'))
    if not three.exists():
        make_folder(three, n_classes=3, n_train=4, n_val=2)
        make_folder(one, n_classes=1, n_train=32, n_val=2)
    fill = dict(folder=folder, tmp=str(tmp), run=str(bridged / 'bridge'), three=str(three), one=str(one))
    before = (bridged / 'bridge' / 'ckpt.pt').read_bytes()
    with pytest.raises(UserError, match=message):
        bridge.main([a.format(**fill) for a in argv])
    assert (bridged / 'bridge' / 'ckpt.pt').read_bytes() == before and not os.path.exists(tmp / 'run' / 'ckpt.pt')
