"""Open a FiftyOne collection in the App, served on localhost unless told otherwise."""
from .fiftyone_db import require_fiftyone

DEFAULT_PORT = 5151


def launch_app(collection, port=DEFAULT_PORT, address="127.0.0.1"):
    """Start the App server for ``collection`` and return its ``fo.Session`` (close it with
    ``session.close()``, or block with ``session.wait()``). No browser is opened: the URL is
    printed, so this works over SSH (forward the port) and in headless tests."""
    fo = require_fiftyone()
    session = fo.launch_app(collection, port=port, address=address, remote=True, auto=False)
    return session
