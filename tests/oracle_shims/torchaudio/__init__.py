"""Empty stand-in: upstream imports torchaudio only for its 25 Hz tokenizer, which the 12 Hz models never use."""
