"""Test stand-in for LLaDA's configuration (the real one ships with GSAI-ML/LLaDA-8B-Instruct).

Only the fields tie-lite's export reads, with LLaDA's names: d_model, n_heads, n_kv_heads, n_layers,
mlp_hidden_size, vocab_size, embedding_size, max_sequence_length, weight_tying,
scale_logits, mask_token_id.
"""

from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, d_model=32, n_heads=2, n_kv_heads=None, n_layers=2, mlp_hidden_size=64, vocab_size=64,
                 embedding_size=None, max_sequence_length=128, weight_tying=False, scale_logits=False,
                 rope_theta=10000.0, mask_token_id=None, **kwargs):
        self.d_model, self.n_heads, self.n_kv_heads, self.n_layers = d_model, n_heads, n_kv_heads, n_layers
        self.mlp_hidden_size, self.vocab_size, self.embedding_size = mlp_hidden_size, vocab_size, embedding_size
        self.max_sequence_length, self.weight_tying, self.scale_logits = max_sequence_length, weight_tying, scale_logits
        self.rope_theta, self.mask_token_id = rope_theta, mask_token_id
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
