"""The modeling code `pico export` copies beside the weights of a model no standard transformers architecture
represents (RoPE, the copy head): `configuration_pico.py` and `modeling_pico.py`, loaded by `transformers` with
`trust_remote_code=True`. They import only torch and transformers, never pico: a user loads them without pico."""
