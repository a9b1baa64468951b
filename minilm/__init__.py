"""minilm: a small, readable library for learning how LLMs are pre-trained efficiently.

Top-level names are re-exported from the modules that define them; open those modules next to a
lab to read the equations they implement.
"""

__version__ = "0.1.0"

# Whole modules a lab uses by name: minilm.attention.sliding_window_mask(...), minilm.scaling...
from minilm import attention, filtering, fp8, imbalance, mixing, mup, scaling, selection, sharpness, toy_problems  # noqa: E402
from minilm.checkpoint import load_checkpoint, save_checkpoint
from minilm.data import (
    ByteTokenizer,
    CharTokenizer,
    Dataset,
    MarkovLanguage,
    ZipfMarkovMixture,
    ZipfUnigram,
    get_batch,
    load_dataset,
    pydoc_text,
    stdlib_code,
)
from minilm.data.bpe import BPETokenizer
from minilm.device import configure_threads, resolve_device, seed_everything
from minilm.ledger import ComputeLedger
from minilm.models import (
    GPT,
    LSTMLM,
    RWKV,
    SSMLM,
    GPTConfig,
    KVCache,
    LanguageModel,
    LSTMConfig,
    NGramConfig,
    NGramLM,
    NGramModel,
    RWKVConfig,
    SSMConfig,
    build_model,
    model_from_checkpoint,
)
from minilm.optim import SGD, Adam, AdamW, Lion, Muon, SignSGD, Sophia, make_optimizer
from minilm.schedules import constant, cosine, cumulative_lr, inverse_sqrt, wsd, wsd_branch
from minilm.train import TrainConfig, TrainingDivergedError, evaluate, train

__all__ = [
    "wsd_branch",
    "inverse_sqrt",
    "cumulative_lr",
    "mup",
    "fp8",
    "GPT",
    "LSTMLM",
    "RWKV",
    "SSMLM",
    "SGD",
    "Adam",
    "AdamW",
    "BPETokenizer",
    "ComputeLedger",
    "LSTMConfig",
    "Lion",
    "Muon",
    "NGramConfig",
    "NGramLM",
    "NGramModel",
    "RWKVConfig",
    "SSMConfig",
    "SignSGD",
    "Sophia",
    "attention",
    "imbalance",
    "make_optimizer",
    "scaling",
    "sharpness",
    "toy_problems",
    "filtering",
    "mixing",
    "selection",
    "ByteTokenizer",
    "CharTokenizer",
    "Dataset",
    "GPTConfig",
    "KVCache",
    "LanguageModel",
    "MarkovLanguage",
    "TrainConfig",
    "TrainingDivergedError",
    "ZipfMarkovMixture",
    "ZipfUnigram",
    "__version__",
    "build_model",
    "configure_threads",
    "constant",
    "cosine",
    "evaluate",
    "get_batch",
    "load_checkpoint",
    "load_dataset",
    "model_from_checkpoint",
    "pydoc_text",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "stdlib_code",
    "train",
    "wsd",
]
