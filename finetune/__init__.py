"""Everything that trains: aligner heads, domain router, VLM projector, preference pairs, DPO, SFT."""
