"""Data pipeline of the Parameter Golf project: shards, tokenizers, CaseOps, export, download, verification."""
