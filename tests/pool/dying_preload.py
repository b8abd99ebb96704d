"""Imported only by a forkserver in test_pool_hostile.py: it dies there, as a broken main module would."""

import os

os._exit(3)
