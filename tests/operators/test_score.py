"""CLAP embeddings whichever transformers the project allows: a tensor (4.x) or an output object (5.x)."""
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from operators.score import embeddings


def test_embeddings_from_either_return_type():
    x = torch.arange(6.0).reshape(2, 3)
    assert embeddings(x) is x
    assert embeddings(BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 4, 3), pooler_output=x)) is x
