import numpy as np
import pytest

from tools.whisper_ct2 import ConversionError, packaged_source, read_ct2, to_hf_state


@pytest.fixture(scope="module")
def ct2():
    import os

    return read_ct2(os.path.join(packaged_source(), "model.bin"))


def test_packaged_model_maps_every_tensor(ct2):
    state, facts = to_hf_state(*ct2)
    assert facts == dict(d_model=384, num_mel_bins=80, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                         decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, vocab_size=51864,
                         max_source_positions=1500, max_target_positions=448)
    assert state["model.encoder.layers.0.self_attn.k_proj.weight"].shape == (384, 384)
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in state
    assert state["model.decoder.layers.3.encoder_attn.v_proj.bias"].shape == (384,)


def test_nonzero_key_bias_is_refused(ct2):
    variables, aliases = dict(ct2[0]), ct2[1]
    name = "encoder/layer_1/self_attention/linear_0/bias"
    bias = variables[name].copy()
    bias[400] = 0.5  # inside the key third of the fused [q; k; v] bias
    variables[name] = bias
    with pytest.raises(ConversionError, match="encoder/layer_1/self_attention/linear_0: fused key bias is not zero"):
        to_hf_state(variables, aliases)


def test_untied_projection_and_unknown_tensors_are_refused(ct2):
    with pytest.raises(ConversionError, match="tied to the embeddings"):
        to_hf_state(ct2[0], {})
    variables = dict(ct2[0]) | {"decoder/extra/weight": np.zeros((2, 2), np.float16)}
    with pytest.raises(ConversionError, match=r"no transformers counterpart: \['decoder/extra/weight'\]"):
        to_hf_state(variables, ct2[1])


def test_truncated_file_is_refused(tmp_path):
    import os

    data = open(os.path.join(packaged_source(), "model.bin"), "rb").read()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        read_ct2(str(tmp_path / "model.bin"))
    (tmp_path / "model.bin").write_bytes(data + b"\0\0")
    with pytest.raises(ConversionError, match="2 trailing bytes"):
        read_ct2(str(tmp_path / "model.bin"))
