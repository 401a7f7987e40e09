"""The worker side: the encoder (one checkpoint, decoding, the forward pass; `encoder`), the upload's
segment plan that travels with its job (`plan`), and the encoder worker that takes work from the broker
(`worker`)."""
