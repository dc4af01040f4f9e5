"""medvlm-rag: evidence-grounded medical vision-language question answering."""

__version__ = "0.1.0"
