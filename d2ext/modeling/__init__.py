from .backbone import *  # noqa: F401,F403  (importing registers the backbones)
