"""
The command lines' shared plumbing, as nanoGPT's configurator.py: flags, --help, one-line errors.

A flag is a module-level line `name = default  # what it does` in bridge.py, analysis.py, bench.py.
`--name value` or `--name=value` overrides it with a value of the default's type; `--help` prints
every flag with its default and its comment, read from the script's own source, so they never drift.
A string flag whose comment lists its values as `a: what | b: what | c` (its default one of them)
accepts those values only: the choices live in the flag's own line, nowhere else. A first
argument config/NAME.py (nanoGPT's config files) is a file of such flag lines, `name = value`,
checked as flags are; the flags after it override its values.
"""
import ast
import difflib
import json
import math
import os
import re
import signal
import sys
import time
from types import SimpleNamespace

import torch

FLAG_LINE = re.compile(r'^([a-z]\w*) = (.+?)  # (.+)$')  # lower-case name = default  # comment
CHOICE = re.compile(r'\s*([^\s:(]+)')  # a value listed in a comment: its first word
TRUE, FALSE = ('true', '1', 'yes'), ('false', '0', 'no')
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}  # dense bf16, for MFU


def check_torchvision():
    """torchvision must be built for this torch. A pair installed apart (a CPU torch beside a CUDA
    torchvision, say) fails on import deep inside torchvision ("operator torchvision::nms does not
    exist"); here it is one line naming both versions and the fix. Every script imports this
    module before torchvision."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, AttributeError, OSError) as e:
        from importlib.metadata import PackageNotFoundError, version
        try:
            found = f"torchvision {version('torchvision')}"
        except PackageNotFoundError:
            found = "no torchvision"
        why = (str(e).splitlines() or [type(e).__name__])[0][:100]
        sys.exit(f"error: {found} does not work with torch {torch.__version__} ({why}): install "
                 f"both together in a new virtual environment: pip install -r requirements.txt")


check_torchvision()


class UserError(Exception):
    """A mistake in what the user asked for (a flag, a file, a spec): one line, exit status 1.
    alone: this process's own trouble (its peers never joined), said on any rank."""

    def __init__(self, message, alone=False):
        super().__init__(message)
        self.alone = alone


class Stopped(BaseException):
    """A run stopped by SIGINT or SIGTERM: exit status 128 + the signal (130, 143: the shell's
    convention, so that `bridge.py ... && bridge.py --stage finetune ...` does not go on). result:
    the last metrics when it stopped with a checkpoint; else why there is none. A BaseException,
    like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum, result=None, why=''):
        super().__init__(signum, why)
        self.signum, self.result, self.why = signum, result, why


def flags_of(namespace):
    """{name: (default, its source text, comment)} for the flag lines of the script whose globals
    are namespace."""
    with open(namespace['__file__']) as f:
        matches = [FLAG_LINE.match(line) for line in f]
    return {m[1]: (namespace[m[1]], m[2].strip(), m[3]) for m in matches if m and m[1] in namespace}


def choices_of(default, comment):
    """The values a string flag accepts, from its comment 'a: what | b (what) | c' when its default
    is one of them; None (any value) otherwise."""
    listed = [m[1] for m in map(CHOICE.match, comment.split(' | ')) if m]
    if isinstance(default, str) and ' | ' in comment and default in listed:
        return tuple(listed)
    return None


def help_text(namespace):
    """The script's docstring, then a line per flag: --name default (as in the source)  comment."""
    table = flags_of(namespace)
    shown = {k: f"--{k} {source}" for k, (_, source, _) in table.items()}
    width = max(map(len, shown.values()))
    rows = [f"  {shown[k].ljust(width)}  {comment}" for k, (_, _, comment) in table.items()]
    head = namespace['__doc__'].strip() + "\n\nflags (--name value or --name=value):\n"
    return head + '\n'.join(rows)


def parse(argv, namespace, choices=None, positive=()):
    """argv -> (every flag in a SimpleNamespace, the names given). Numbers must be >= 0, those in
    positive > 0; choices: {name: accepted values} beyond those the flags' comments list (see
    choices_of). --help or -h prints help_text and exits 0."""
    if '--help' in argv or '-h' in argv:
        print(help_text(namespace))
        sys.exit(0)
    table = flags_of(namespace)
    defaults = {k: v for k, (v, _, _) in table.items()}
    listed = {k: choices_of(v, comment) for k, (v, _, comment) in table.items()}
    choices = {**{k: v for k, v in listed.items() if v}, **(choices or {})}
    values, given, args = dict(defaults), set(), list(argv)
    if args and args[0].endswith('.py') and not args[0].startswith('-'):  # nanoGPT's config/X.py
        args = config_args(args.pop(0), defaults, choices, positive) + args
    while args:
        arg = args.pop(0)
        key, eq, val = arg.removeprefix('--').partition('=')
        if not arg.startswith('--') or key not in values:
            raise UserError(unknown(arg, key, values))
        if not eq:
            val = next_value(key, values[key], args)
        values[key] = convert(key, val, defaults[key], choices.get(key), key in positive)
        given.add(key)
    return SimpleNamespace(**values), given


def config_args(path, defaults, choices, positive):
    """A config file (config/NAME.py: flag lines `name = value` and comments, as nanoGPT's) -> its
    flags as --name=value arguments, each checked as a flag is; flags after it override them."""
    try:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
    except OSError as e:
        raise UserError(f"config file {path}: {e.strerror}") from None
    except SyntaxError as e:
        raise UserError(f"{path}, line {e.lineno}: not Python ({e.msg})") from None
    args = []
    for node in tree.body:
        where = f"{path}, line {node.lineno}"
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if not (isinstance(target, ast.Name) and len(node.targets) == 1):
            raise UserError(f"{where}: a config file holds flag lines `name = value` only")
        try:
            value = ast.literal_eval(node.value)
            if target.id not in defaults:
                raise UserError(unknown(target.id, target.id, defaults))
            convert(target.id, str(value), defaults[target.id], choices.get(target.id),
                    target.id in positive)
        except ValueError:
            raise UserError(f"{where}: {target.id}'s value is not a literal") from None
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        args.append(f"--{target.id}={value}")
    return args


def unknown(arg, key, values):
    """The message for a flag that does not exist: the closest names, else all of them."""
    close = difflib.get_close_matches(key, values, n=3, cutoff=0.5)
    if close:
        return f"unknown flag '{arg}'; did you mean {', '.join('--' + c for c in close)}?"
    return f"unknown flag '{arg}'; flags are --name value or --name=value, name one of: " \
           f"{', '.join(values)} (see --help)"


def next_value(key, default, args):
    """The value after --key: the next argument; a bare boolean flag (--wandb) means True."""
    if isinstance(default, bool) and (not args or args[0].startswith('--')):
        return 'True'
    if not args:
        raise UserError(f"--{key} needs a value (default {default!r})")
    return args.pop(0)


def convert(key, val, default, choices=None, positive=False):
    """A command-line string -> the type of the flag's default, or a UserError saying what is
    accepted."""
    if isinstance(default, bool):
        if val.lower() not in TRUE + FALSE:
            raise UserError(f"--{key} {val!r}: expected True or False")
        return val.lower() in TRUE
    try:
        out = type(default)(val)
    except ValueError:
        kind = 'an integer' if isinstance(default, int) else 'a number'
        raise UserError(f"--{key} {val!r}: expected {kind}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise UserError(f"--{key} {val}: expected a finite number")
    if isinstance(out, (int, float)) and (out <= 0 if positive else out < 0):
        raise UserError(f"--{key} {val}: must be {'> 0' if positive else '>= 0'}")
    if choices and out not in choices:
        same = [x for x in choices if isinstance(out, str) and x.lower() == out.lower()]
        if same:  # --compile false means False
            return same[0]
        close = difflib.get_close_matches(out, choices, n=1)
        hint = f"; did you mean {close[0]}?" if close else ''
        raise UserError(f"--{key} {val!r} is not one of {', '.join(choices)}{hint}")
    return out


def pick_device(name):
    """'auto' -> cuda if there is one, else mps, else cpu; anything else is checked and returned."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
        name = 'mps' if name == 'cpu' and torch.backends.mps.is_available() else name
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cuda', 'mps', 'cpu'):
        raise UserError(f"--device {name!r}: use auto, cuda, cuda:N, mps or cpu")
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: no Apple GPU (MPS) here; use --device cpu")
    return device


def ranks():
    """-> (RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them; (0, 1, 0) without torchrun. Values
    that torchrun would never set are a one-line error, not a hang or a traceback."""
    env = {k: os.environ.get(k, '') for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    try:
        rank, world = int(env['RANK'] or 0), int(env['WORLD_SIZE'] or 1)
        local = int(env['LOCAL_RANK'] or 0)
    except ValueError:
        shown = ' '.join(f"{k}={v!r}" for k, v in env.items() if v)
        raise UserError(f"{shown}: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK to whole numbers; "
                        f"unset them to run one process") from None
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} with WORLD_SIZE={world}: needs 0 <= RANK < WORLD_SIZE "
                        f"(torchrun sets both; unset them to run one process)")
    if world > 1 and not (os.environ.get('MASTER_ADDR') and os.environ.get('MASTER_PORT')):
        raise UserError(f"WORLD_SIZE={world} without MASTER_ADDR and MASTER_PORT: start the "
                        f"{world} processes with torchrun --standalone --nproc_per_node={world}")
    return rank, world, local


def cores():
    """The CPU cores this process may use: its affinity mask, shared by torchrun's local ranks."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return share(n)


def share(n):
    """This process's share of n cores: torchrun starts LOCAL_WORLD_SIZE processes per machine."""
    return max(1, n // int(os.environ.get('LOCAL_WORLD_SIZE', 1)))


def set_threads(device, wanted=0):
    """torch's CPU threads: wanted (a resumed run's own count: other counts sum in another order),
    else on the CPU the cores that other processes leave idle now (an OpenMP thread on a busy core
    stalls all the others: 2.5x slower on 2 cores with one busy), else cores(). OMP_NUM_THREADS,
    when set, wins. -> the number of threads."""
    if 'OMP_NUM_THREADS' not in os.environ:
        torch.set_num_threads(wanted or (free_cores() if device.type == 'cpu' else cores()))
    return torch.get_num_threads()


def free_cores(seconds=0.2):
    """The cores of this process's affinity mask that sat idle over the next `seconds` (Linux's
    /proc/stat), shared by torchrun's local ranks; where that cannot be read, cores()."""
    try:
        before = cpu_times()
        time.sleep(seconds)
        after = cpu_times()
    except (OSError, AttributeError):
        return cores()
    busy = sum((after[k][0] - before[k][0]) / max(1, after[k][1] - before[k][1]) for k in after)
    return share(round(len(after) - busy))


def cpu_times():
    """{cpu: (busy, total) clock ticks} since boot, for the CPUs this process may run on."""
    allowed, times = os.sched_getaffinity(0), {}
    with open('/proc/stat') as f:
        for name, *ticks in (line.split() for line in f):
            if name[:3] == 'cpu' and name[3:].isdigit() and int(name[3:]) in allowed:
                t = [int(x) for x in ticks[:8]]  # user nice system idle iowait irq softirq steal
                times[name] = (sum(t) - t[3] - t[4], sum(t))
    return times


def to_json(obj, **kwargs):
    """json.dumps that writes a non-finite number as null: NaN and Infinity are not JSON."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return [clean(v) for v in x] if isinstance(x, (list, tuple)) else x
    return json.dumps(clean(obj), allow_nan=False, **kwargs)


def peak_flops(device):
    """The dense bf16 peak FLOP/s of the GPU behind device (SXM parts), for MFU; None elsewhere."""
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def autocast_dtype(name, device, on_cuda='bfloat16', on_cpu=None):
    """--dtype -> a torch dtype. 'auto' is on_cuda on CUDA; on a CPU, on_cpu if given, else
    bfloat16 where the CPU multiplies in it natively (native_bf16), float32 elsewhere; bfloat16
    becomes float16 on GPUs before Ampere."""
    if name == 'auto' and device.type == 'cuda':
        name = on_cuda
    if name == 'auto' and device.type == 'cpu':
        name = on_cpu or ('bfloat16' if native_bf16() else 'float32')
    if name == 'bfloat16' and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        name = 'float16'
    return torch.float32 if name == 'auto' else getattr(torch, name)


def native_bf16():
    """Whether this CPU has bfloat16 multiply instructions (AMX or AVX512-BF16), as torch reports
    them: there a bfloat16 matmul runs 2-10x its float32 one (torch < 2.6 does not say: False)."""
    ask = getattr(torch.cpu, 'get_capabilities', dict)
    caps = ask()
    return bool(caps.get('amx_bf16') or caps.get('avx512_bf16'))


def speaks():
    """Whether this process prints a run's errors: rank 0 of a torchrun job (the others would say
    the same), or any process whose torchrun variables make no job (RANK=1 alone, say)."""
    try:
        rank, world = int(os.environ.get('RANK') or 0), int(os.environ.get('WORLD_SIZE') or 1)
    except ValueError:
        return True
    job = 0 <= rank < world and os.environ.get('MASTER_ADDR') and os.environ.get('MASTER_PORT')
    return rank == 0 or not job


def run_cli(main):
    """Run main(sys.argv[1:]); a UserError ends the program with one line on stderr and exit 1
    (under torchrun, from rank 0 only: the others exit quietly; see speaks); a stop by a signal
    exits with 128 + its number, Ctrl-C with one line and 130."""
    try:
        main(sys.argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}" if speaks() or e.alone else 1)
    except Stopped as e:
        if e.why and speaks():
            print(f"stopped by {signal.Signals(e.signum).name} {e.why}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # a side command (export, analysis, sample, bench): one line
        if speaks():
            print("stopped by SIGINT (Ctrl-C): nothing more is written", file=sys.stderr)
        sys.exit(130)
