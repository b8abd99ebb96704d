"""One embedding process per machine: the service (``hivemem serve``) and its thin client.

``server`` owns the model, the micro-batching queue and the cache and listens on a Unix socket
(``wire`` defines the frames); ``client`` is what every worker process holds (``hivemem.connect()``);
``http`` is the optional OpenAI-compatible front door; ``spawn`` starts exactly one service when many
processes ask at once. The client side imports neither onnxruntime nor tokenizers nor torch.
"""
