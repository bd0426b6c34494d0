"""Data: sources, the Grain pipeline and its packing, SFT examples, host shards."""
