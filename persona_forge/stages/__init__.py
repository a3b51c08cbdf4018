"""One module per stage; each reads typed JSONL from the run directory and writes its own."""
