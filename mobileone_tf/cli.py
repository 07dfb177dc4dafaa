"""Small helpers shared by the absl scripts in scripts/."""

import sys


def weights_arg(value: str):
    """``--weights`` value: ``'none'`` means random initialization (``None``)."""
    return None if value is None or value.lower() == "none" else value


def run(main):
    """Wraps an absl ``main``: expected input errors (ValueError,
    FileNotFoundError) print one ``error: ...`` line and exit with status 1
    instead of a traceback."""
    def wrapped(argv):
        try:
            return main(argv)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return wrapped
