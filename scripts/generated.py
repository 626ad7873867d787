"""What the table scripts share: the --readme option, and rewriting a README block between its
two marker comments with text generated from measured JSON."""
import json
import os
import re
import sys

# Where the measured JSON lives.
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "results")


def json_lines(name):
    """The records of docs/results/NAME (one JSON object per line); none when it is absent."""
    path = os.path.join(RESULTS, name)
    return [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []


def pop_option(args, name):
    """The value of `name VALUE` in args (removed from them), or None."""
    if name not in args:
        return None
    i = args.index(name)
    value = args[i + 1]
    del args[i:i + 2]
    return value


def replace_blocks(path, blocks):
    """Rewrites each (begin marker, end marker) -> body in the file; a body of None is left alone."""
    text = open(path).read()
    for (begin, end), body in blocks:
        if body is None:
            continue
        if begin not in text or end not in text:
            sys.exit(f"{path} has no markers {begin} ... {end}")
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{body}\n{end}", text, flags=re.S)
    open(path, "w").write(text)


def removed(before, after, within):
    """reproduce's own rule (which_defense_removed in src/reproduce/mod.rs): within budget,
    attack success at least halved and below 0.1."""
    return bool(within) and after is not None and before is not None and after < 0.1 and after <= before / 2
