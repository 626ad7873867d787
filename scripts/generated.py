"""What the table scripts share: the --readme option, and rewriting a README block between its
two marker comments with text generated from measured JSON."""
import re
import sys


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
