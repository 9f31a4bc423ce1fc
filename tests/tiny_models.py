"""Tiny randomly initialised causal LMs with a tokenizer trained on the spot, saved as local model directories.

They exercise the real loading, tokenisation (with character offsets), batching and
decoding paths in well under a second per call, with no download.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import Gemma3TextConfig, Gemma3ForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "Answer the question using the documents. Answer with a short phrase.",
    "Document (Title: Paris): Paris is the capital of France. It is on the Seine.",
    "Document (Title: Berlin): Berlin is the capital of Germany. Dr. Smith lives in the U.S. now.",
    "Question: What is the capital of France?\nAnswer: Paris\n",
    "Classify the text as one of: negative, positive.\n\nText: a charming and often affecting journey\nLabel: positive",
    "unflinchingly bleak and desperate film. Label: negative. The quick brown fox jumps over the lazy dog 1998.",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 5, trainer)
    from tokenizers.processors import TemplateProcessing

    tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def build_tiny_model_dir(path: Path, architecture: str = "llama", seed: int = 0, hidden_size: int = 32) -> Path:
    """Write a tiny `architecture` ('llama' or 'gemma3') model and its tokenizer to `path`."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif architecture == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"]))
    else:
        raise ValueError(architecture)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def model_view(loaded, context=None, **engine_options):
    """A `ModelView` on a fresh `TransformersEngine` of `loaded` (engine options as keywords; `context`: a `RunContext`)."""
    from longshap.hierarchy.engines import ModelView
    from longshap.hierarchy.engines.hf_engine import TransformersEngine

    return ModelView(TransformersEngine(loaded, **engine_options), context)
