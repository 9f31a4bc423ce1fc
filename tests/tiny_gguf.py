"""A tiny Llama model written as GGUF, with the same weights and tokenizer as a tiny Hugging Face directory.

llama.cpp then runs exactly the model transformers runs (float32, no quantisation), so
the llama.cpp and OpenAI-server engines can be checked against the transformers engine
on the same weights in well under a second per call.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM


def _rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder a Q or K projection's rows from Hugging Face's rotate-half layout to llama.cpp's interleaved RoPE pairs."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(model_dir: Path, path: Path) -> Path:
    """Write the tiny Llama in `model_dir` (tests/tiny_models.py) to `path` as a float32 GGUF with its BPE tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = model.config
    if config.model_type != "llama":
        raise ValueError(f"only tiny Llama models are written as GGUF, not {config.model_type}")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, model_dir)
    state = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    parts = {
        "input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        writer.add_tensor(f"blk.{layer}.attn_q.weight", _rope_rows(state[prefix + "self_attn.q_proj.weight"], config.num_attention_heads))
        writer.add_tensor(f"blk.{layer}.attn_k.weight", _rope_rows(state[prefix + "self_attn.k_proj.weight"], config.num_key_value_heads))
        for hf_name, gguf_name in parts.items():
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", state[prefix + hf_name + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path) -> None:
    """The directory's byte-level BPE tokenizer as llama.cpp's `gpt2` tokenizer (GPT-2 pre-tokenisation, BOS added)."""
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = spec["model"]["vocab"]
    specials = {token["content"]: token["id"] for token in spec["added_tokens"]}
    vocab.update(specials)
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token in specials else gguf.TokenType.NORMAL for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(specials["<bos>"])
    writer.add_eos_token_id(specials["<eos>"])
    writer.add_pad_token_id(specials["<pad>"])
    writer.add_unk_token_id(specials["<unk>"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
