"""Everything that trains the answering model: VLM projector alignment, RAG-PT preference pairs, DPO,
the knowledge-SFT baseline and their shared LoRA plumbing. Imports `rag`; `rag` never imports it
(the router and aligner heads, trained at index-build time, live in `rag.heads`)."""
