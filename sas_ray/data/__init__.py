"""Image data: sources (readers), images (decode), shards (Parquet format), ingest (Ray Data)."""
