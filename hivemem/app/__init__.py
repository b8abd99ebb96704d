"""The application layer: the command line (one module per verb group), ``hivemem serve``,
``hivemem status`` and the demo. Nothing below imports it."""
