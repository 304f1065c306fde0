"""Receipts as one package: the rules (`rules`), the signature workers that open envelopes on
every core (`signature_workers`), intake of an agent's batch (`intake`), what is read back
(`queries`), and the writer-side store that posts, logs and acknowledges (`store`)."""
