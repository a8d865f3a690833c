"""loraplug-datasets: train from anything Hugging Face ``datasets`` reads.

Serves data kind ``hf-dataset`` for every model kind: local parquet, arrow, JSON Lines and CSV files (or a
directory of them, or one written by ``save_to_disk``) and hub datasets by id, config, split and revision.
Columns are mapped to loraplug's records by schema — alpaca, sharegpt, prompt/response and messages become
the chat records causal LMs read (exactly as ``jsonl`` makes them), text + label the labelled-text records
classifiers read — so cleaning, balancing, packing and ``loraplug data inspect`` treat them as any other.

The hooks live in :mod:`.plugin`; datasets and pyarrow are imported only when data is read or checked.
"""
