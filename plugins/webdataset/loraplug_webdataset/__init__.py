"""loraplug-webdataset: train from WebDataset tar shards, and pack any data kind into them.

Serves data kind ``webdataset`` for every model kind: image samples (an image and a caption) become the
records image models read, ``{"id", "image", "caption"}``; text samples (JSON with prompt/response or
messages) become the chat records causal LMs read, ``{"id", "messages"}``. Shards are split by process
and by DataLoader worker, shuffled per epoch, and a sample that cannot be decoded is skipped and counted.

It also adds ``loraplug data pack KIND SOURCE --out DIR``, which loads SOURCE through whichever plugin
serves data kind KIND (``imagefolder``, ``jsonl``, …) and writes the records as shards.

The hooks live in :mod:`.plugin`; webdataset and torch are imported only when data is read or packed.
"""
