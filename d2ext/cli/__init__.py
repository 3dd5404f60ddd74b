"""The command-line tools (tools/*.py run these): train, demo, benchmarks, converters, curation.

Every tool's ``main`` runs under ``run_tool``: a user mistake (``d2ext.errors.UserError``) ends in
one line on stderr naming the file or key and the fix, exit code 1; ``--debug`` shows the
traceback instead. ``parse_args`` accepts options typed after the KEY VALUE config overrides.
"""
import re
import sys

from ..errors import UserError

__all__ = ["CONFIG_KEY", "parse_args", "run_tool", "split_class_names"]

# A config key (MODEL.WEIGHTS, MODEL.TEXT_PROMPT.SCORE_THRESHOLD): upper case, dotted.
CONFIG_KEY = re.compile(r"[A-Z0-9_]+(\.[A-Z0-9_]+)+")


def run_tool(name, main, argv=None, exit_code=1):
    """``main(argv)``'s exit code; a ``UserError`` is printed as ``name: message`` (one line) and
    gives ``exit_code``, unless ``--debug`` is among the arguments (then it is raised)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv) or 0
    except UserError as err:
        if "--debug" in argv:
            raise
        print(f"{name}: {' '.join(str(err).split())}", file=sys.stderr)
        return exit_code


def _split_overrides(tokens):
    """(option tokens, KEY VALUE overrides) of the words an ``opts`` REMAINDER took: an option
    (``--x``) keeps the words after it up to the next config key or option."""
    options, overrides, i = [], [], 0
    while i < len(tokens):
        if tokens[i].startswith("--"):
            options.append(tokens[i])
            i += 1
            while i < len(tokens) and not tokens[i].startswith("--") \
                    and not CONFIG_KEY.fullmatch(tokens[i]):
                options.append(tokens[i])
                i += 1
        else:
            overrides += tokens[i: i + 2]
            i += 2
    return options, overrides


def parse_args(parser, argv=None, opts="opts"):
    """``parser.parse_args(argv)``, where options typed after the config overrides (collected
    by the positional REMAINDER ``opts``), e.g. ``MODEL.WEIGHTS w.pth --resume``, are parsed as
    the options they are instead of becoming overrides."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    tail = list(getattr(args, opts, None) or [])
    options, overrides = _split_overrides(tail)
    if not options:
        return args
    head = argv[: len(argv) - len(tail)] if tail and argv[-len(tail):] == tail else argv
    return parser.parse_args(head + options + overrides)


def split_class_names(classes, flag="--classes"):
    """(names, overrides) from the words after ``--classes``: being ``nargs="+"``, it also takes
    the KEY VALUE overrides typed after it, so the first word shaped like a config key ends the
    names, and it and the rest are overrides. Raises ``UserError`` for an empty or blank name,
    or no name at all."""
    classes = list(classes or [])
    end = next((i for i, c in enumerate(classes) if CONFIG_KEY.fullmatch(c)), len(classes))
    names, overrides = classes[:end], classes[end:]
    if not names and overrides:
        raise UserError(f"{flag}: no class name before the config key {overrides[0]}; name "
                        f"the classes first, e.g. {flag} duck panda {overrides[0]} ...")
    if any(not name.strip() for name in names):
        raise UserError(f"{flag} {' '.join(repr(n) for n in names)}: a class name is empty "
                        f"or blank; give each class a name, e.g. {flag} duck panda")
    return names, overrides
