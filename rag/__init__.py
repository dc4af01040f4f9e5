"""medvlm-rag: evidence-grounded medical vision-language question answering."""

import os
import warnings

# huggingface_hub and transformers read this when they are first imported: their per-file "Loading
# weights" bars say nothing a person needs, in the Python API (notebooks) as on the command line.
# Set HF_HUB_DISABLE_PROGRESS_BARS=0 before importing rag (or run `medrag --verbose`) to see them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# In a Jupyter kernel without ipywidgets, the libraries' `tqdm.auto` imports warn that they fall
# back to text bars; the text bars are what our notebooks show, so the warning tells a reader nothing.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

__version__ = "0.1.0"
