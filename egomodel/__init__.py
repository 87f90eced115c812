"""Motion-imprinted egocentric action recognition (GTEA61): data, model, training."""
