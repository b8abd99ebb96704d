"""``python -m hivemem …``: the ``hivemem`` command line (what ``hivemem.connect()`` runs to start
the machine's service: ``python -m hivemem serve``)."""

from hivemem.app.cli import main

main()
