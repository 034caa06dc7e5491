"""PicoConfig: the settings of pico's GPT (pico's `model:` params, under the same names) for `transformers`.

Shipped beside the weights of a `pico export` and loaded with `trust_remote_code=True`; imports only
transformers, never pico.
"""

from transformers import PretrainedConfig

POS_ENCODINGS = ("learned", "rope")


class PicoConfig(PretrainedConfig):
    """pico's decoder-only GPT: pre-LN blocks (LayerNorm without bias), tanh-GELU MLP without bias, no biases
    anywhere, the output layer tied to the embedding; learned or rotary positions; an optional copy head."""

    model_type = "pico_gpt"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                     "max_position_embeddings": "max_seq_len"}

    def __init__(self, vocab_size: int = 4096, d_model: int = 192, n_layer: int = 4, n_head: int = 4,
                 max_seq_len: int = 512, dropout: float = 0.0, mlp_ratio: int = 4, pos_encoding: str = "rope",
                 copy_head: bool = True, copy_dim: int = 64, copy_value_key: bool = True, copy_min_gap: int = 16,
                 copy_line_breaks: bool = True, copy_match: int = 0, tie_word_embeddings: bool = True, **kwargs):
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding = {pos_encoding!r}: pico's GPT has {', '.join(POS_ENCODINGS)}")
        if d_model % n_head:
            raise ValueError(f"n_head = {n_head} does not divide d_model = {d_model}")
        if pos_encoding == "rope" and (d_model // n_head) % 2:
            raise ValueError(f"rope needs an even head size; d_model / n_head = {d_model // n_head}")
        if not tie_word_embeddings:
            raise ValueError("pico's output layer is the embedding: tie_word_embeddings must be true")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layer = n_layer
        self.n_head = n_head
        self.max_seq_len = max_seq_len
        self.dropout = dropout
        self.mlp_ratio = mlp_ratio
        self.pos_encoding = pos_encoding
        self.copy_head = copy_head
        self.copy_dim = copy_dim
        self.copy_value_key = copy_value_key
        self.copy_min_gap = copy_min_gap
        self.copy_line_breaks = copy_line_breaks
        self.copy_match = copy_match
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
