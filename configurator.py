"""
Flags for every command, nanoGPT's way: a flag is a module-level line of the script,
`name = default  # what it does`. `--name value` or `--name=value` sets it, checked against the
default's type; config/NAME.py, a file of lines `name = value`, sets several (files and flags
apply in order); --help prints the flag lines. A user error is one line and exit status 1.
"""
import ast
import difflib
import json
import math
import re
import sys
from types import SimpleNamespace

import torch

FLAG_LINE = re.compile(r'^([a-z]\w*) = (.+?)  # (.+)$')  # lower-case name = default  # comment


class UserError(Exception):
    """A mistake in what the user asked for (a flag, a file, a spec): one line, exit status 1."""


class Stopped(BaseException):
    """A run stopped by a signal (exit 128 + it); result: the metrics it stopped with. Not an
    Exception, so that no `except Exception` swallows it."""

    def __init__(self, signum, result=None):
        super().__init__(signum)
        self.signum, self.result = signum, result


def flags_of(namespace):
    """{name: (default as written, comment)} of the flag lines of the script of these globals."""
    with open(namespace['__file__']) as f:
        found = [FLAG_LINE.match(line) for line in f]
    return {m[1]: (m[2].strip(), m[3]) for m in found if m and m[1] in namespace}


def parse(argv, namespace, choices=None, ranges=None):
    """argv -> (every flag in a SimpleNamespace, the names given). choices: {name: the values it
    takes}; ranges: {name: (lowest, highest)}, else a number is finite and >= 0."""
    if '--help' in argv or '-h' in argv:
        rows = {f"--{k} {v}": comment for k, (v, comment) in flags_of(namespace).items()}
        print(namespace['__doc__'].strip() + '\n\nflags (--name value or --name=value):')
        print('\n'.join(f"  {k.ljust(max(map(len, rows)))}  {v}" for k, v in rows.items()))
        sys.exit(0)
    values, given, args = {k: namespace[k] for k in flags_of(namespace)}, set(), list(argv)
    while args:
        arg = args.pop(0)
        key, eq, val = arg.removeprefix('--').partition('=')
        if arg.endswith('.py') and not arg.startswith('-'):  # nanoGPT's config/NAME.py
            pairs = config_file(arg)
        elif arg.startswith('--') and key in values:
            pairs = [(key, val if eq else next_value(key, values[key], args), '')]
        else:
            raise UserError(unknown(arg, values))
        for key, val, where in pairs:
            try:
                if key not in values:
                    raise UserError(unknown(key, values))
                values[key] = convert(key, val, namespace[key], (choices or {}).get(key),
                                      (ranges or {}).get(key, (0, math.inf)))
            except UserError as e:
                raise UserError(where + str(e)) from None
            given.add(key)
    return SimpleNamespace(**values), given


def config_file(path):
    """config/NAME.py -> [(name, value as a string, 'FILE, line N: ')]."""
    try:
        with open(path, encoding='utf-8-sig') as f:  # -sig: a byte-order mark is not an error
            tree = ast.parse(f.read(), path)
    except OSError as e:
        raise UserError(f"config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except SyntaxError as e:
        raise UserError(f"config file {path}, line {e.lineno}: not Python ({e.msg})") from None
    pairs = []
    for node in tree.body:
        where = f"{path}, line {node.lineno}: "
        name = node.targets[0].id if isinstance(node, ast.Assign) and len(node.targets) == 1 \
            and isinstance(node.targets[0], ast.Name) else None
        if name is None:
            raise UserError(where + "a config file holds flag lines `name = value` only")
        try:
            pairs.append((name, str(ast.literal_eval(node.value)), where))
        except (ValueError, TypeError, SyntaxError, RecursionError):
            raise UserError(f"{where}the value of {name} is not a literal") from None
    return pairs


def unknown(arg, values):
    """The line for a flag that does not exist: the closest names, else all of them."""
    close = difflib.get_close_matches(arg.removeprefix('--'), values, n=3, cutoff=0.6)
    names = ', '.join('--' + k for k in close or values)
    hint = f"did you mean {names}?" if close else f"the flags are {names}"
    return f"unknown flag '{arg}' (flags come as --name value or --name=value); {hint}"


def next_value(key, default, args):
    """The value after --key: the next argument; a bare boolean flag (--wandb) means True."""
    if isinstance(default, bool) and (not args or args[0].startswith('--')):
        return 'True'
    if not args:
        raise UserError(f"--{key} needs a value (default {default!r})")
    return args.pop(0)


def convert(key, val, default, choices, bounds):
    """A command-line string -> the type of the flag's default, or a line saying what it takes."""
    if isinstance(default, bool):
        if val.lower() not in ('true', 'false', '1', '0'):
            raise UserError(f"--{key} {val!r}: expected True or False")
        return val.lower() in ('true', '1')
    try:
        out = type(default)(val)
    except ValueError:
        kind = 'an integer' if isinstance(default, int) else 'a number'
        raise UserError(f"--{key} {val!r}: expected {kind}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise UserError(f"--{key} {val}: expected a finite number")
    lo, hi = bounds
    if not isinstance(out, str) and not lo <= out <= hi:
        raise UserError(f"--{key} {val}: must be " + (f">= {lo}" if hi == math.inf else
                                                      f"in [{lo}, {hi}]"))
    same = [x for x in choices or () if x.lower() == out.lower()]  # --compile false is False
    if choices and not same:
        raise UserError(f"--{key} {val!r} is not one of {', '.join(choices)}")
    return same[0] if same else out


def pick_device(name):
    """'auto' -> cuda if there is one, else mps, else cpu; any other name is checked."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
        name = 'mps' if name == 'cpu' and torch.backends.mps.is_available() else name
    here = dict(cpu=True, cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available())
    kind, _, index = name.partition(':')
    if kind not in here or index and not index.isdigit():
        raise UserError(f"--device {name!r}: use auto, cuda, cuda:N, mps or cpu")
    if not here[kind] or int(index or 0) >= max(1, torch.cuda.device_count()):
        raise UserError(f"--device {name}: there is no such device here; use --device cpu")
    return torch.device(name)


def to_json(obj, **kwargs):
    """json.dumps that writes a number that is not finite as null (NaN is not JSON)."""
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return None if isinstance(x, float) and not math.isfinite(x) else x
    return json.dumps(clean(obj), **kwargs)


def run_cli(main):
    """main(sys.argv[1:]): a UserError is one line on stderr and exit 1; a run stopped by a signal
    exits 128 + its number; Ctrl-C in a side command is one line and exit 130."""
    try:
        main(sys.argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}")
    except Stopped as e:
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("stopped by Ctrl-C (SIGINT): nothing more is written", file=sys.stderr)
        sys.exit(130)
